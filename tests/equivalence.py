"""Helpers of the update-equivalence tests: build a Trainer on the tiny translation recipe, take its batches, build
the one batch that holds the union of several, and compare the updates the optimizer made.

The recipe is ``runs.RECIPE`` with dropout 0 (the M copies of a sentence are then identical and every run is
deterministic) and plain SGD with momentum at a constant learning rate: an update is ``-lr * (gradient + momentum
buffer)``, so a gradient scaled by a wrong factor changes the update by that factor (Adam's first step would hide
it: its update is ``lr * g / |g|``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from seqba import config as config_lib
from seqba.data.translation import collate
from seqba.trainer import Trainer

EXACT = ["model.dropout=0.0", "optim.optimizer=sgd", "optim.momentum=0.9", "optim.lr=0.5",
         "optim.lr_scheduler=constant", "optim.clip_norm=0", "train.validate_interval_updates=0",
         "train.progress_bar=false", "train.mixed_precision=no"]


def build_trainer(recipe: Path, *overrides: str) -> Trainer:
    """A set-up Trainer for ``recipe`` with :data:`EXACT` and ``overrides`` (later ones win)."""
    trainer = Trainer(config_lib.load(str(recipe), [*EXACT, *overrides]))
    trainer.setup()
    return trainer


def parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    """name -> a float64 copy of each parameter of the trained model (on the CPU)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: p.detach().to("cpu", torch.float64).clone() for name, p in model.named_parameters()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two :func:`parameters` snapshots are bit for bit equal."""
    return a.keys() == b.keys() and all(a[name].equal(b[name]) for name in a)


def sample_ids(batch: dict) -> list[int]:
    """Dataset indices of a batch's distinct sentences, in order (the batch is before BA expansion)."""
    return batch["sample_id"].tolist()


def union_batch(trainer: Trainer, ids: list[int]) -> dict:
    """One training batch (on the trainer's device) holding the sentences ``ids`` of the train split, as the
    loader collates them."""
    data = trainer.task.train_data
    return trainer.task.to_device(collate([data[i] for i in ids]))


def updates(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """name -> ``after - before``: what the optimizer did to each parameter."""
    return {name: after[name] - before[name] for name in before}


def assert_same_updates(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float = 1e-4) -> None:
    """Every parameter's update equal to float32 precision: within ``rtol`` of the update's largest entry (a
    summation order that differs leaves float32 rounding, a normalisation off by any factor does not)."""
    assert got.keys() == want.keys()
    for name, expected in want.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(got[name], expected, rtol=rtol, atol=rtol * scale + 1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert any(float(u.abs().max()) > 0 for u in want.values()), "nothing was updated"

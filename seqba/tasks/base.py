"""The interface between the generic training loop (:mod:`seqba.train`) and a model family.

One training step, as :func:`seqba.train.train` runs it::

    batch = next(epoch_iterator)                  # B distinct samples, already on the device
    expanded = task.expand(batch)                 # M·B rows: repeat_batch (+ per-copy augmentation)
    total = task.sample_size(expanded)            # normaliser of the whole M·B batch (e.g. target tokens)
    for chunk in task.split(expanded, k):         # BA micro-batches (cfg.ba.micro_batches)
        loss_sum, logs = task.loss(model, chunk)  # summed over the chunk
        accelerator.backward(loss_sum / total)    # grads equal the whole-batch ones up to float error
    optimizer.step()

A task owns its data iteration (so that it can resume mid-epoch exactly) and whatever state must survive a
restart (``state_dict``), and validates a model (``validate``). Everything else (devices, processes, mixed
precision, accumulation, clipping, checkpoints, logging) belongs to the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from seqba.distributed import worker_seed
from seqba.samplers import repeat_batch


@dataclass(frozen=True)
class TaskSpec:
    """Dataclasses of a task's recipe sections and the class that builds it."""

    data_config: type
    model_config: type
    criterion_config: type
    task_class: type
    #: ``evaluate(cfg, model_state, args) -> dict`` used by ``python -m seqba.eval`` (see seqba/eval.py)
    evaluate: Any = None


class Task:
    """Base class of a model family; subclasses override what differs. ``cfg`` is a :class:`seqba.config.Config`.

    Attributes:
        cfg: the experiment config.
        accelerator: the ``accelerate.Accelerator`` of this process (device, rank, world size).
    """

    #: name of the metric whose lowest value marks the best checkpoint, and whether lower is better
    best_metric: tuple[str, bool] = ("loss", True)

    def __init__(self, cfg: Any, accelerator: Any) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.device = accelerator.device

    # -- building -----------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimizer parameter groups; the default applies ``optim.weight_decay`` to every parameter."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    # -- data ---------------------------------------------------------------------------------------------
    def num_batches(self, epoch: int) -> int:
        """Batches this rank takes in ``epoch`` (the same on every rank)."""
        raise NotImplementedError

    def epoch_iterator(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Yield this rank's batches of ``epoch`` from batch ``start`` on, on ``self.device``."""
        raise NotImplementedError

    def loader_generator(self, epoch: int) -> torch.Generator:
        """A generator for this rank's ``DataLoader`` of ``epoch``.

        Creating a DataLoader iterator draws its base seed from the generator it is given, or else from the global
        torch RNG, which would make a resumed run's dropout differ from the uninterrupted one. Seeded per rank, so
        the members of a BA group augment their copies differently in loader workers.
        """
        return torch.Generator().manual_seed(worker_seed(self.cfg.seed, self.accelerator.process_index) + epoch)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move the tensors of a collated batch to ``self.device`` (non-blocking from pinned memory)."""
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def expand(self, batch: Any) -> Any:
        """B distinct samples -> M·B rows (default: :func:`repeat_batch` with the recipe's layout)."""
        ba = self.cfg.ba
        if not ba.expand_on_device:
            return batch
        return repeat_batch(batch, ba.repeats, ba.layout)

    def split(self, batch: Any, chunks: int) -> list[Any]:
        """Split an expanded batch into ``chunks`` micro-batches along the rows."""
        if chunks == 1:
            return [batch]
        raise NotImplementedError(f"{type(self).__name__} does not support ba.micro_batches > 1")

    def sample_size(self, batch: Any) -> float:
        """The normaliser of a whole expanded batch (e.g. its non-pad target tokens)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one (micro-)batch; return the loss SUMMED over it and float logs to be summed over chunks."""
        raise NotImplementedError

    def step_logs(self, batch: Any, expanded: Any) -> dict[str, float]:
        """Per-step counters such as distinct and total tokens (summed over ranks by the loop)."""
        return {}

    # -- hooks --------------------------------------------------------------------------------------------
    def lr_scale(self, batch: Any) -> float:
        """Factor on the scheduled learning rate for this batch (1.0; AWD-LSTM rescales by seq_len / bptt)."""
        return 1.0

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (e.g. to update an averaged model)."""

    def after_validate(self, metrics: dict[str, float]) -> None:
        """Called with each validation's metrics (e.g. to switch to averaged SGD)."""

    # -- evaluation ---------------------------------------------------------------------------------------
    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model to validate and save (default: the unwrapped training model; AWD-LSTM: its average)."""
        return self.accelerator.unwrap_model(model)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the validation split, identical on every rank."""
        raise NotImplementedError

    # -- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State that must survive a restart besides model/optimizer (tensors and plain Python only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

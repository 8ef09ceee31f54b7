"""Batch Augmentation in Hugging Face ``transformers.Trainer``: ``BATrainer`` and ``BatchAugmentationMixin``.

Two routes to the M copies of every training sample (Hoffer et al., "Augment your batch", CVPR 2020):

* ``route="device"`` (dropout copies): the Trainer loads B distinct samples as usual; ``compute_loss`` expands
  the batch to M·B rows on the device with :func:`seqba.repeat_batch` (copies differ by their dropout masks).
* ``route="index"`` (augmented copies): the train loader repeats indices with :class:`seqba.RepeatBatchSampler`
  over a :class:`seqba.TokenBudgetBatchSampler` (``max_tokens`` distinct tokens per batch, padding counted) or a
  :class:`seqba.FixedSizeBatchSampler` (``per_device_train_batch_size`` distinct samples), so a dataset transform
  or a collator can augment each copy. The sampler shards by rank itself and is not re-sharded by Accelerate.

What the integration keeps right (each is a test in ``tests/test_integrations_transformers.py``):

* Loss normalisation. Models that take ``num_items_in_batch`` (GPT-2 and most causal LMs in transformers 5) sum
  the token losses and divide by it; the Trainer counts the label tokens of the batches it loaded, i.e. before the
  device-side expansion, so the plain override scales loss and gradients by M (GPT-2: 30.18 instead of 7.545 at
  M=4). The mixin multiplies ``num_items_in_batch`` by M, so the loss is the mean over all M·B copies' tokens of
  the accumulation window (and of all processes with ``average_tokens_across_devices``), as at M=1.
* Gradient accumulation: nothing is changed; the window's token count is M times larger, as are its tokens.
* Evaluation untouched: only training batches (``model.training``) are expanded, and the eval loaders are the
  Trainer's own, so ``evaluate()``/``predict()`` and ``compute_metrics`` see exactly what they see at M=1.
* Batch sizes in the logs: Trainer's "Total train batch size" counts DISTINCT samples per update (for
  ``route="index"`` with ``max_tokens`` it is meaningless, the batches have a token budget); the mixin adds to
  every training log ``ba_repeats`` (M), ``ba_rows_per_update`` and ``ba_samples_per_update`` (rows and distinct
  samples per optimizer update on this process, averaged over the updates since the last log).

Usage (tiny GPT-2 from a config, no hub)::

    from seqba.integrations.transformers import BAArguments, BATrainer

    trainer = BATrainer(model=GPT2LMHeadModel(GPT2Config(...)), args=TrainingArguments(...),
                        train_dataset=train, eval_dataset=valid, data_collator=collate,
                        ba=BAArguments(repeats=4, route="device"))
    trainer.train()

With your own Trainer subclass: ``class MyTrainer(BatchAugmentationMixin, Seq2SeqTrainer): ...`` (the mixin first).
Install with ``pip install seqba[hf]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer

from seqba.integrations.accelerate import prepare_data_loader
from seqba.repeat import LAYOUTS, RepeatBatchSampler, check_repeats, repeat_batch
from seqba.samplers import FixedSizeBatchSampler, TokenBudgetBatchSampler

__all__ = ["BAArguments", "BatchAugmentationMixin", "BATrainer", "ROUTES"]


ROUTES = ("device", "index")


@dataclass
class BAArguments:
    """How a Trainer applies Batch Augmentation.

    Attributes:
        repeats: M, copies of every training sample per batch (1: plain training).
        route: ``"device"`` (expand the loaded batch in ``compute_loss``) or ``"index"`` (repeat indices in the
            train loader's batch sampler).
        layout: ``"adjacent"`` ([a, a, b, b]) or ``"tiled"`` ([a, b, a, b]).
        max_tokens: ``route="index"`` only: distinct-token budget per batch on each process, padding counted
            (``len(batch) * max length <= max_tokens``); ``None``: fixed batches of
            ``per_device_train_batch_size`` distinct samples (``dataloader_drop_last`` honoured).
        lengths: ``route="index"`` with ``max_tokens``: (N,) sample lengths in tokens, or the name of a dataset
            column holding sequences (their ``len``) or lengths. Default ``"input_ids"``.
        required_batch_size_multiple: ``route="index"`` with ``max_tokens``: preferred multiple of batch sizes.
        group_size: consecutive processes that receive identical batches (distributed BA,
            :mod:`seqba.distributed`); divides the world size. ``route="index"`` only.

    Raises:
        ValueError: (at construction) a bad ``repeats``, ``route``, ``layout`` or ``group_size``, or ``max_tokens``
            with ``route="device"``.
    """

    repeats: int = 1
    route: str = "device"
    layout: str = "adjacent"
    max_tokens: int | None = None
    lengths: str | Sequence[int] | np.ndarray = "input_ids"
    required_batch_size_multiple: int = 1
    group_size: int = 1

    def __post_init__(self) -> None:
        check_repeats(self.repeats)
        if self.route not in ROUTES:
            raise ValueError(f"BAArguments.route must be one of {ROUTES}, got {self.route!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"BAArguments.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.route == "device" and (self.max_tokens is not None or self.group_size != 1):
            raise ValueError("BAArguments.max_tokens and group_size need route='index' (the device route keeps "
                             "the Trainer's own sampler)")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"BAArguments.group_size must be an int >= 1, got {self.group_size!r}")


def _rows(inputs: Any) -> int:
    """Rows of a batch: dim 0 of its first tensor with a dimension (0 when there is none)."""
    values = inputs.values() if isinstance(inputs, dict) or hasattr(inputs, "values") else inputs
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.size(0))
    return 0


class BatchAugmentationMixin:
    """Batch Augmentation for any ``transformers.Trainer`` subclass: put it first in the bases.

    Overrides ``compute_loss`` (device route: expand training batches M-fold and scale ``num_items_in_batch`` by
    M), ``get_train_dataloader`` (index route: seqba batch sampler, repeated indices, no re-sharding) and ``log``
    (adds ``ba_repeats``, ``ba_rows_per_update``, ``ba_samples_per_update`` to training logs). See the module
    docstring for what each keeps right.

    Args:
        *args, **kwargs: the Trainer's.
        ba: the BA settings; default ``BAArguments()`` (M=1).
    """

    def __init__(self, *args: Any, ba: BAArguments | None = None, **kwargs: Any) -> None:
        self.ba = ba if ba is not None else BAArguments()
        self._ba_rows = 0
        self._ba_last_step = 0
        super().__init__(*args, **kwargs)

    # -- device route ------------------------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        """The Trainer's loss on M·B rows during training (device route); unchanged in evaluation.

        ``inputs`` (B, ...) tensors become (M·B, ...); ``num_items_in_batch`` (label tokens of the accumulation
        window, before expansion) becomes M times larger, so a model that divides its summed token losses by it
        returns the per-token mean over all copies.
        """
        if model.training:
            if self.ba.route == "device" and self.ba.repeats > 1:
                inputs = repeat_batch(inputs, self.ba.repeats, self.ba.layout)
                if num_items_in_batch is not None:
                    num_items_in_batch = num_items_in_batch * self.ba.repeats
            self._ba_rows += _rows(inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    # -- index route -------------------------------------------------------------------------------------
    def _ba_lengths(self, dataset: Any) -> np.ndarray:
        lengths = self.ba.lengths
        if isinstance(lengths, str):
            column = dataset[lengths] if hasattr(dataset, "column_names") else [item[lengths] for item in dataset]
            lengths = [x if isinstance(x, (int, np.integer)) else len(x) for x in column]
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (len(dataset),):
            raise ValueError(f"BAArguments.lengths: expected {len(dataset)} lengths, got shape {lengths.shape}")
        return lengths

    def ba_batch_sampler(self, dataset: Any) -> RepeatBatchSampler:
        """The index route's batch sampler for ``dataset``: M-fold repeated batches of this process's shard.

        Seeded with ``args.data_seed`` (or ``args.seed``); the same on every process, as the sampler requires.
        """
        args = self.args
        common = dict(seed=args.data_seed if args.data_seed is not None else args.seed,
                      num_replicas=args.world_size, rank=args.process_index, group_size=self.ba.group_size)
        if self.ba.max_tokens is None:
            batches = FixedSizeBatchSampler(len(dataset), args.per_device_train_batch_size,
                                            drop_last=args.dataloader_drop_last, **common)
        else:
            batches = TokenBudgetBatchSampler(self._ba_lengths(dataset), self.ba.max_tokens,
                                              required_batch_size_multiple=self.ba.required_batch_size_multiple,
                                              **common)
        return RepeatBatchSampler(batches, self.ba.repeats, layout=self.ba.layout)

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's train loader (device route), or one over :meth:`ba_batch_sampler` (index route)."""
        if self.ba.route != "index":
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        dataset, collator = self.train_dataset, self.data_collator
        batch_sampler = self.ba_batch_sampler(dataset)  # lengths read before unused columns are removed
        if hasattr(dataset, "column_names"):  # a datasets.Dataset: drop columns the model does not take
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        args = self.args
        loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collator,
                            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
                            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0)
        return prepare_data_loader(self.accelerator, loader)

    # -- logging -----------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add ``ba_repeats``, ``ba_rows_per_update`` and ``ba_samples_per_update`` (this process) to training logs."""
        updates = self.state.global_step - self._ba_last_step
        if "loss" in logs and updates > 0:
            rows = self._ba_rows / updates
            logs = {**logs, "ba_repeats": self.ba.repeats, "ba_rows_per_update": rows,
                    "ba_samples_per_update": rows / self.ba.repeats}
            self._ba_rows, self._ba_last_step = 0, self.state.global_step
        super().log(logs, *args, **kwargs)


class BATrainer(BatchAugmentationMixin, Trainer):
    """``transformers.Trainer`` with Batch Augmentation: ``BATrainer(..., ba=BAArguments(repeats=4))``."""

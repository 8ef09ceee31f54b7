"""The interface between the generic training loop (:class:`seqba.trainer.Trainer`) and a model family.

One update, as ``Trainer.train_step`` runs it (``update_freq`` batches, each expanded by the run's
:class:`~seqba.ba.BatchAugmentation` and cut into ``ba.sample_chunks`` chunks)::

    for batch in batches:                             # B distinct samples each, already on the device
        expanded = ba.expand(batch)                   # M·B rows (CopyLayout) + task.augment (per-copy changes)
        total += task.sample_size(expanded)           # normaliser (e.g. target tokens of the M·B rows)
        for chunk in ba.split(expanded):              # task.chunk_rows + task.select_rows: every copy of a sample
            loss_sum, logs = task.loss(model, chunk)  # summed over the chunk
            accelerator.backward(loss_sum)
    grads /= total (over ranks and batches); clip; optimizer.step()

A task owns its data iteration (so that it can resume mid-epoch exactly) and whatever state must survive a
restart (``state_dict``), and validates a model (``validate``, called with the model already in eval mode and
gradients off). Everything else (devices, processes, train/eval mode, mixed precision, accumulation, clipping,
checkpoints, logging) belongs to the loop.

What the rest of seqba asks about a family (evaluation, studies, analysis) is its :class:`~seqba.tasks.spec.TaskSpec`;
:class:`GradAdapter` is the part of ``python -m seqba.analyze grad-correlation`` a family provides.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from seqba.data.batch_seeds import NumberedBatches, SeededBatchFetch
from seqba.distributed import worker_seed
from seqba.layout import CopyLayout
from seqba.repeat import RepeatBatchSampler


class Task:
    """Base class of a model family; subclasses override what differs. ``cfg`` is a :class:`seqba.config.Config`.

    Attributes:
        cfg: the experiment config.
        accelerator: the ``accelerate.Accelerator`` of this process (device, rank, world size).
    """

    #: name of the metric whose lowest value marks the best checkpoint, and whether lower is better
    best_metric: tuple[str, bool] = ("loss", True)
    #: ``torch.compile(dynamic=...)`` under ``train.compile``: True traces one graph with symbolic batch shapes
    #: (token budgets and BPTT windows change shape every step); False specialises on each shape
    compile_dynamic: bool = True
    #: the axis of a batch's tensors that holds its rows (samples, and their BA copies): 0, or 1 for time-major
    #: text streams
    batch_dim: int = 0
    #: a copy layout the family requires whatever ``ba.layout`` says (None: the recipe's)
    copy_layout: str | None = None

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

    def iterate_loader(self, dataset: Any, sampler: Any, collate_fn: Callable, epoch: int,
                       start: int) -> Iterator[Any]:
        """This rank's batches of ``epoch`` from batch ``start`` on, on the device: the shared loader of the tasks
        that batch with a seqba sampler.

        ``sampler`` yields B distinct indices per batch; with ``ba.expand_on_device: false`` it is wrapped in a
        :class:`~seqba.repeat.RepeatBatchSampler` so that the loader yields M·B rows. The position comes from
        ``sampler.load_state_dict`` (exact mid-epoch resume); the random numbers drawn while loading a batch from
        ``(seed, rank, epoch, batch index)`` (:mod:`seqba.data.batch_seeds`), the worker seeds from
        :meth:`loader_generator`.
        """
        sampler.load_state_dict({"epoch": epoch, "iterations_in_epoch": start})
        ba = self.cfg.ba
        batch_sampler = sampler if ba.expand_on_device else RepeatBatchSampler(sampler, ba.repeats, layout=ba.layout)
        # random numbers drawn while loading (augmentation in the DataLoader) follow the batch's position in the
        # epoch, not the worker that fetches it: exact after any resume, whatever num_workers (seqba.data.batch_seeds)
        seed = worker_seed(self.cfg.seed, self.accelerator.process_index)
        loader = DataLoader(SeededBatchFetch(dataset, seed, epoch), batch_sampler=NumberedBatches(batch_sampler, start),
                            collate_fn=collate_fn,
                            generator=self.loader_generator(epoch), num_workers=self.cfg.train.num_workers,
                            pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield self.to_device(batch)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move the tensors of a collated batch to ``self.device`` (non-blocking from pinned memory)."""
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    @property
    def loader_repeats(self) -> bool:
        """Whether the loader already yields M·B rows (``ba.expand_on_device: false``, see :meth:`iterate_loader`),
        so that :class:`~seqba.ba.BatchAugmentation` does not repeat them again."""
        return not self.cfg.ba.expand_on_device

    def augment(self, batch: Any, layout: CopyLayout) -> Any:
        """What makes the copies of an expanded batch (M·B rows in ``layout``) differ at the input; the default
        changes nothing (the copies then differ by their dropout masks)."""
        return batch

    def num_rows(self, batch: Any) -> int:
        """Rows of a batch: the size along :attr:`batch_dim` of its first tensor (a dict of tensors by default)."""
        return next(v for v in batch.values() if torch.is_tensor(v)).size(self.batch_dim)

    def chunk_rows(self, batch: Any, chunks: int, layout: CopyLayout) -> list[Tensor]:
        """Row indices of the ``chunks`` pieces an expanded batch is cut into (``ba.sample_chunks``): by default on
        sample boundaries, every copy of a sample in one piece (:meth:`CopyLayout.sample_chunks`), so that a
        consistency term across the copies can be computed piece by piece."""
        first = next(v for v in batch.values() if torch.is_tensor(v))
        return layout.sample_chunks(self.num_rows(batch), chunks, first.device)

    def select_rows(self, batch: Any, rows: Tensor) -> Any:
        """The rows ``rows`` (int64 (n,)) of a batch along :attr:`batch_dim`; every tensor of a dict by default."""
        return {k: v.index_select(self.batch_dim, rows) if torch.is_tensor(v) else v for k, v in batch.items()}

    def sample_size(self, batch: Any) -> float:
        """The normaliser of a whole expanded batch (e.g. its non-pad target tokens)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one (micro-)batch; return the loss SUMMED over it and float logs to be summed over chunks."""
        raise NotImplementedError

    def step_logs(self, batch: Any, expanded: Any) -> dict[str, float]:
        """Per-step counters beyond ``<unit>_count`` and ``distinct_<unit>_count``, which
        :class:`~seqba.ba.BatchAugmentation` counts (e.g. sentences); summed over ranks by the loop."""
        return {}

    def batch_state(self) -> Any:
        """What the task carries into its next training batch (a recurrent model's hidden state), as ``row_losses``
        takes it; None for tasks whose batches are independent. Observers read it, never write it."""
        return None

    def row_losses(self, model: nn.Module, batch: Any, hidden: Any = None) -> tuple[Tensor, Tensor]:
        """Per-row data loss of an expanded training batch, in one forward of ``model`` as it is (training mode),
        and the copy each row belongs to: what gradient statistics (:mod:`seqba.gradstats`) differentiate per copy.

        Args:
            batch: an expanded batch (``expand``'s output), N rows.
            hidden: the recurrent state before the batch, for tasks that carry one (None otherwise).

        Returns:
            ``(losses, copy_index)``: float (N,) with a graph to the parameters, whose sum is the data term of
            ``loss`` (without regularisers or consistency terms); int64 (N,) in 0 .. M-1.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-row losses (gradient statistics)")

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
        """The model to validate and save (default: the unwrapped, uncompiled training model; AWD-LSTM: its
        average)."""
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the validation split, identical on every rank. The loop calls it with ``model`` in eval mode
        under ``torch.no_grad()`` and restores the training mode afterwards."""
        raise NotImplementedError

    # -- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State that must survive a restart besides model/optimizer (tensors and plain Python only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class GradAdapter:
    """One family's model, samples and per-copy gradients for ``python -m seqba.analyze grad-correlation``
    (``TaskSpec.analysis``).

    ``samples(split, n, rng)`` yields ``(label, sample)`` (label: a class id when samples have classes, which adds
    the same-class / different-class relations; else None); ``copy_grads(sample, M)`` returns name -> (M, *shape)
    per-copy gradients, or (1 + M, *shape) with the unaugmented sample first when ``clean_first``.

    Attributes:
        cfg: the run's config; ``device``: where the model is; ``model``: built by :meth:`build`, with ``state``
            loaded (None: freshly initialised from the recipe's seed, as training starts);
        params: name -> parameter that requires gradients.
    """

    #: row 0 of ``copy_grads`` is the unaugmented sample, rows 1..M its copies
    clean_first = False

    def __init__(self, cfg: Any, state: dict | None, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)  # --init: the weights training would start from
        self.model = self.build().to(device)
        if state is not None:
            self.model.load_state_dict(state)
        self.params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}

    def build(self) -> nn.Module:
        raise NotImplementedError

    def samples(self, split: str, n: int, rng: np.random.Generator) -> Iterator[tuple[int | None, Any]]:
        raise NotImplementedError

    def copy_grads(self, sample: Any, copies: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def calibrate(self, batches: int, rng: np.random.Generator) -> None:
        """Prepare a freshly initialised model for measurement (``--init``), e.g. BatchNorm running statistics
        from ``batches`` training batches; the default does nothing."""

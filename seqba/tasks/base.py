"""The interface between the generic training loop (:class:`seqba.trainer.Trainer`) and a model family.

One update, as ``Trainer.train_step`` runs it (``update_freq`` batches, each expanded and cut into
``ba.micro_batches`` chunks)::

    for batch in batches:                             # B distinct samples each, already on the device
        expanded = task.expand(batch)                 # M·B rows: repeat_batch (+ per-copy augmentation)
        total += task.sample_size(expanded)           # normaliser (e.g. target tokens of the M·B rows)
        for chunk in task.split(expanded, k):         # BA micro-batches; every copy of a sample in one chunk
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
from seqba.samplers import RepeatBatchSampler, repeat_batch


def sample_chunks(rows: int, repeats: int, layout: str, chunks: int,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Row indices of ``chunks`` micro-batches of an expanded batch, cut on sample boundaries.

    The batch has ``rows = M·B`` rows laid out as :func:`~seqba.samplers.repeat_batch` lays them out: ``adjacent``
    (copies of sample b are rows b·M .. b·M+M-1) or ``tiled`` (copy c of sample b is row c·B+b). Chunk i takes
    the samples of ``arange(B).tensor_split(chunks)[i]`` with ALL their copies, in the same layout, so that a
    loss across copies can be computed per chunk. Empty chunks (chunks > B) are dropped.

    Returns:
        a list of int64 (M·b_i,) index tensors on ``device``; together they cover every row exactly once.

    Raises:
        ValueError: ``rows`` not a multiple of ``repeats``, or an unknown ``layout``.
    """
    if rows % repeats:
        raise ValueError(f"{rows} rows are not a multiple of repeats={repeats}")
    samples = rows // repeats
    out = []
    for part in torch.arange(samples, device=device).tensor_split(min(chunks, max(samples, 1))):
        if len(part) == 0:
            continue
        copies = torch.arange(repeats, device=device)
        if layout == "adjacent":
            out.append((part[:, None] * repeats + copies[None, :]).flatten())  # (b, M) sample-major
        elif layout == "tiled":
            out.append((copies[:, None] * samples + part[None, :]).flatten())  # (M, b) copy-major
        else:
            raise ValueError(f"layout must be 'adjacent' or 'tiled', got {layout!r}")
    return out


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
        :class:`RepeatBatchSampler` so that the loader yields M·B rows. The position comes from
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
        """Per-step counters such as distinct and total tokens (summed over ranks by the loop): ``<unit>_count``
        and ``distinct_<unit>_count`` for the spec's ``batch_unit`` at least."""
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

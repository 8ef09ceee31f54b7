"""Batch Augmentation's step plumbing, once for every task family: the copies, the chunks, the counters.

BA (Hoffer et al., "Augment your batch", CVPR 2020) turns a batch of B distinct samples into M·B rows, M copies of
each; every copy then gets its own augmentation or dropout mask. :class:`BatchAugmentation` is the part of one
training step that is the same for every family, owned by the trainer (:class:`seqba.trainer.Trainer`)::

    expanded = ba.expand(batch)        # B samples -> M·B rows (CopyLayout), then task.augment: per-copy changes
    logs += ba.counts(ba.sample_size(expanded))     # <unit>_count and distinct_<unit>_count
    for chunk in ba.split(expanded):   # ba.sample_chunks pieces, each with every copy of its samples
        ...                            # task.loss(model, chunk), backward

A task supplies only what differs (:class:`seqba.tasks.base.Task`): ``batch_dim`` (the axis its rows lie on),
``augment`` (what makes one copy differ at the input: images' crops and flips; nothing for dropout-only tasks),
``select_rows`` (how to take some rows of its batch, e.g. trimming padding) and, where a family must cut otherwise,
``chunk_rows`` (ghost batch norm keeps consecutive rows together; the language model cuts whole copies so that each
column keeps its hidden state).
"""
from __future__ import annotations

from typing import Any

from seqba.layout import CopyLayout

__all__ = ["BatchAugmentation"]


class BatchAugmentation:
    """The BA part of a training step for one run (``ba:`` section) and one task.

    Args:
        ba_cfg: the recipe's ``ba:`` section (:class:`seqba.config.BAConfig`): ``repeats`` (M), ``layout``,
            ``expand_on_device``, ``sample_chunks``, ``group_size``, ``fork_layer`` (k > 0: the task's model makes
            the copies at layer k, so batches stay B rows here and the task's loss sees M·B rows of output).
        task: the run's :class:`~seqba.tasks.base.Task`.
        unit: what the task's ``sample_size`` counts (its spec's ``batch_unit``: tokens, words, images).

    Attributes:
        layout: the :class:`~seqba.layout.CopyLayout` of the expanded batches (the task may impose its own kind:
            ``task.copy_layout``).
    """

    def __init__(self, ba_cfg: Any, task: Any, unit: str) -> None:
        self.task, self.unit = task, unit
        self.layout = CopyLayout(ba_cfg.repeats, task.copy_layout or ba_cfg.layout)
        self.chunks = ba_cfg.sample_chunks
        self.group_size = ba_cfg.group_size
        self.forked = ba_cfg.fork_layer > 0  # the model makes the copies (ba.fork_layer): batches stay B rows

    def expand(self, batch: Any) -> Any:
        """B distinct samples -> M·B rows along ``task.batch_dim`` (unless the loader repeated them already:
        ``task.loader_repeats``), then the task's per-copy ``augment``. With a fork (``ba.fork_layer > 0``) the
        batch stays as it is: the model repeats its hidden states at layer k."""
        if self.forked:
            return batch
        rows = batch if self.task.loader_repeats else self.layout.expand_batch(batch, dim=self.task.batch_dim)
        return self.task.augment(rows, self.layout)

    def sample_size(self, expanded: Any) -> float:
        """The normaliser of an expanded batch: ``task.sample_size``, times M for a forked one (its M·B rows of
        output are counted, so a fork changes where the copies are made, not the loss)."""
        return float(self.task.sample_size(expanded)) * (self.layout.repeats if self.forked else 1)

    def split(self, expanded: Any, chunks: int | None = None) -> list[Any]:
        """The expanded batch in ``chunks`` pieces (default ``ba.sample_chunks``; one piece: the batch itself), each
        holding every copy of its samples unless the task cuts otherwise (``task.chunk_rows``)."""
        chunks = chunks or self.chunks
        if chunks == 1:
            return [expanded]
        layout = CopyLayout(1, self.layout.kind) if self.forked else self.layout  # forked: B rows, cut by sample
        return [self.task.select_rows(expanded, rows) for rows in self.task.chunk_rows(expanded, chunks, layout)]

    def counts(self, size: float) -> dict[str, float]:
        """``{<unit>_count: size, distinct_<unit>_count: size / M / group_size}`` for an expanded batch of ``size``
        units. The trainer sums the counters over ranks, so each of the ``group_size`` ranks that share one batch
        counts ``1 / group_size`` of its distinct units."""
        return {f"distinct_{self.unit}_count": size / self.layout.repeats / self.group_size,
                f"{self.unit}_count": size}

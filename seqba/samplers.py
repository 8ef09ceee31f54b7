"""Batch Augmentation (BA) batching core: token-budget and fixed-size batches, distributed BA rank groups.

Batch Augmentation (Hoffer et al., "Augment your batch: Improving generalization through instance repetition",
CVPR 2020) fills one batch with M copies ("repeats") of each of B distinct samples; each copy gets its own
augmentation or dropout mask, so a step sees M·B rows built from B samples, without extra I/O.

This module needs only torch and numpy, so other codebases can use it on its own::

    from torch.utils.data import DataLoader
    from seqba import TokenBudgetBatchSampler, RepeatBatchSampler

    batches = TokenBudgetBatchSampler(num_tokens, max_tokens=4096, seed=1)   # B: distinct-token budget
    loader = DataLoader(dataset, batch_sampler=RepeatBatchSampler(batches, repeats=4), collate_fn=collate)
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        for batch in loader:   # M·B rows
            ...

For text, where the copies differ only by dropout, it is cheaper to load B distinct samples, move them to the
device once, and expand there with :func:`seqba.repeat.repeat_batch`, which gives exactly what the index-level
:class:`seqba.repeat.RepeatBatchSampler` gives after collation.

Distributed BA: ``num_replicas`` ranks form ``num_replicas // group_size`` groups of ``group_size`` consecutive
ranks; ranks of one group get identical batches (the paper's "every M nodes load the same batch") while
groups get disjoint ones. The sampler seed must be the same on all ranks; dropout and augmentation seeds must
differ (see :func:`seqba.distributed.worker_seed`). Do not pass these batch samplers through
``accelerator.prepare``: its ``BatchSamplerShard`` would shard them again (they raise ``RuntimeError`` when it
iterates them with ``num_replicas > 1``); :func:`seqba.integrations.accelerate.prepare_data_loader` places batches
on the device without re-sharding.

Fixed-size batches (images, timm / DeiT style) need no lengths: :class:`FixedSizeBatchSampler`. The M-fold
repetition (:class:`~seqba.repeat.RepeatBatchSampler`, :func:`~seqba.repeat.repeat_batch`,
:func:`~seqba.repeat.repeat_streams`) lives in :mod:`seqba.repeat`, the copy layouts in :mod:`seqba.layout`.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from seqba.boundaries import batch_boundaries
from seqba.distributed import rank_group
from seqba.repeat import refuse_accelerate_reshard

__all__ = ["TokenBudgetBatchSampler", "FixedSizeBatchSampler", "batch_boundaries"]

logger = logging.getLogger(__name__)


def check_count(name: str, value: Any) -> int:
    """Return ``value`` as an int if it is a non-negative int (numpy ints included).

    Raises:
        ValueError: naming ``name`` and the value, for negatives, floats (even ``2.0``), bools, None, strings.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


class TokenBudgetBatchSampler:
    """Length-sorted token-budget batches (the paper's B), deterministic per (seed, epoch), with BA rank groups.

    Batches are built as fairseq's ``batch_by_size`` (see :func:`batch_boundaries`): samples are sorted by length
    (ties broken by a shuffle seeded with ``seed + epoch``), then cut so that
    ``len(batch) * max(num_tokens[batch]) <= max_tokens`` and ``len(batch) <= max_sentences``. ``max_tokens`` is
    the budget of DISTINCT tokens per batch before BA repetition (4096 for the paper's WMT16 M=4 run).

    Every sample appears exactly once per epoch across all groups: unlike fairseq nothing is silently dropped.
    With ``shuffle=True`` the batch order is shuffled with ``seed + epoch``; the same seed and epoch give the
    same batches on every rank.

    Distributed BA: ranks ``[g * group_size, (g + 1) * group_size)`` form group ``g`` and receive identical
    batches; groups take disjoint batches round-robin from the shuffled list. When the number of batches is not
    a multiple of the number of groups, the largest batches are split in two (at a multiple of
    ``required_batch_size_multiple`` where possible) until it is, so that every rank yields the same number of
    batches (DDP would hang otherwise) and still no sample is lost or duplicated.

    Args:
        num_tokens: (N,) sample lengths in tokens; for translation ``max(src_len, tgt_len)``.
        max_tokens: distinct-token budget per batch, padding included; ``None`` for sentence-count batching.
        max_sentences: at most this many distinct sentences per batch.
        required_batch_size_multiple: batch sizes are multiples of it where the budget allows.
        shuffle: shuffle the batch order (and length ties) with ``seed + epoch``.
        seed: shared sampler seed; must be equal on all ranks.
        num_replicas: world size; rank: this process's rank.
        group_size: consecutive ranks that receive identical batches (BA across nodes); divides ``num_replicas``.
        skip_invalid_size: drop samples longer than ``max_tokens`` (counted in ``num_skipped`` and logged once)
            instead of raising.
        yield_arrays: yield each batch as an int64 numpy array instead of a list of ints. ``DataLoader`` accepts
            both (its fetcher iterates the batch); arrays skip the ``tolist()`` conversion (its cost:
            ``benchmarks/bench_batching.py``). Off by default because code that treats a
            batch as a list (``batch + other``, ``if batch:``, e.g. accelerate's ``BatchSamplerShard``) breaks.

    Raises:
        ValueError: on invalid arguments (naming the value), or for a sample longer than ``max_tokens`` (naming its
            index, its length and the budget) unless ``skip_invalid_size``, or when there are fewer samples than
            groups.
        RuntimeError: when iterated by accelerate's ``BatchSamplerShard`` with ``num_replicas > 1`` (the batches
            would be sharded twice; see :func:`seqba.repeat.refuse_accelerate_reshard`).
    """

    def __init__(
        self,
        num_tokens: Sequence[int] | np.ndarray,
        max_tokens: int | None,
        *,
        max_sentences: int | None = None,
        required_batch_size_multiple: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        group_size: int = 1,
        skip_invalid_size: bool = False,
        yield_arrays: bool = False,
    ) -> None:
        lengths = np.asarray(num_tokens)
        if lengths.ndim != 1:
            raise ValueError(f"num_tokens must be 1-D, got shape {lengths.shape}")
        if lengths.size and (not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 0):
            raise ValueError(f"num_tokens must hold non-negative integers, got dtype {lengths.dtype} (for batches of "
                             "a fixed number of samples, without lengths, use FixedSizeBatchSampler)")
        for name, value in (("max_tokens", max_tokens), ("max_sentences", max_sentences)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if max_tokens is None and max_sentences is None:
            raise ValueError("give max_tokens or max_sentences (or both)")
        if not isinstance(required_batch_size_multiple, (int, np.integer)) or required_batch_size_multiple < 1:
            raise ValueError(f"required_batch_size_multiple must be an int >= 1, got {required_batch_size_multiple!r}")
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        if not isinstance(group_size, (int, np.integer)) or group_size < 1 or num_replicas % group_size:
            raise ValueError(f"group_size must be an int >= 1 dividing num_replicas={num_replicas}, got {group_size!r}")

        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.max_sentences = None if max_sentences is None else int(max_sentences)
        self.required_batch_size_multiple = int(required_batch_size_multiple)
        self.shuffle = bool(shuffle)
        self.seed = check_count("seed", seed)
        self.yield_arrays = bool(yield_arrays)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.group_size = int(group_size)
        where = rank_group(self.rank, self.num_replicas, self.group_size)
        self.num_groups, self.group = where.num_groups, where.group

        indices = np.arange(len(lengths), dtype=np.int64)
        self.num_skipped = 0
        if self.max_tokens is not None:
            too_long = lengths > self.max_tokens
            if too_long.any():
                first = int(np.flatnonzero(too_long)[0])
                if not skip_invalid_size:
                    raise ValueError(
                        f"sample {first} has {int(lengths[first])} tokens, more than max_tokens={self.max_tokens} "
                        f"({int(too_long.sum())} such samples; pass skip_invalid_size=True to drop them)"
                    )
                self.num_skipped = int(too_long.sum())
                logger.warning("skipped %d samples longer than max_tokens=%d (first: %d)",
                               self.num_skipped, self.max_tokens, first)
                indices = indices[~too_long]
        if len(indices) < self.num_groups:
            raise ValueError(f"{len(indices)} samples cannot fill one batch for each of {self.num_groups} groups")
        self._indices = indices
        # Lengths as the narrowest unsigned type so that numpy's stable argsort is a radix sort.
        kept = lengths[indices]
        self._lengths = kept.astype(np.uint16 if kept.size == 0 or kept.max() < 2**16 else np.int64)

        # Batch sizes depend only on the sorted length sequence, which no tie shuffle changes: compute once.
        sorted_lengths = np.sort(self._lengths, kind="stable")
        self._offsets = self._build_offsets(sorted_lengths)
        self.epoch = 0
        self._start = 0  # batches of the current epoch to skip on the next __iter__ (resume)
        self._yielded = 0  # batches yielded so far in the current epoch
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def _build_offsets(self, sorted_lengths: np.ndarray) -> np.ndarray:
        """(num_batches + 1,) offsets of the epoch's batches in length-sorted order, equal per group."""
        offsets = batch_boundaries(sorted_lengths, self.max_tokens, self.max_sentences,
                                   self.required_batch_size_multiple)
        return self._equalize(offsets)

    def _equalize(self, offsets: np.ndarray) -> np.ndarray:
        """Split the largest batches until the batch count is a multiple of ``num_groups``."""
        mult = self.required_batch_size_multiple
        needed = -(-(len(offsets) - 1) // self.num_groups) * self.num_groups
        if needed > offsets[-1]:
            raise ValueError(f"{offsets[-1]} samples cannot fill {needed} non-empty batches, the next multiple of "
                             f"{self.num_groups} groups above the {len(offsets) - 1} built")
        while (len(offsets) - 1) % self.num_groups:
            sizes = np.diff(offsets)
            i = int(np.argmax(sizes))  # first of the largest (>= 2 samples, as the check above guarantees)
            size = int(sizes[i])
            half = (size // 2) // mult * mult or size // 2
            offsets = np.insert(offsets, i + 1, offsets[i] + half)
        return offsets

    # -- epoch bookkeeping -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``__iter__`` yields (call before each epoch, as DDP samplers).

        Raises:
            ValueError: ``epoch`` is not a non-negative int (naming it).
        """
        epoch = check_count("epoch", epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._start = 0
            self._yielded = 0

    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        """All batches of ``epoch`` for all groups, in the shared shuffled order (cached per epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self._indices))
            order = perm[np.argsort(self._lengths[perm], kind="stable")]
        else:
            order = np.argsort(self._lengths, kind="stable")
        order = self._indices[order][: self._offsets[-1]]  # a drop_last tail lies past the last offset
        batches = np.split(order, self._offsets[1:-1])
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (default: the current one), as int64 index arrays."""
        return self._global_batches(self.epoch if epoch is None else epoch)[self.group :: self.num_groups]

    def __len__(self) -> int:
        """Exact number of batches this rank yields per epoch (the same on every rank)."""
        return (len(self._offsets) - 1) // self.num_groups

    def __iter__(self) -> Iterator[list[int] | np.ndarray]:
        refuse_accelerate_reshard(self, sys._getframe(1))
        return self._iter_batches()

    def _iter_batches(self) -> Iterator[list[int] | np.ndarray]:
        mine = self.batches()
        start, self._start = self._start, 0
        self._yielded = start
        for batch in mine[start:]:
            self._yielded += 1
            yield batch if self.yield_arrays else batch.tolist()

    # -- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Epoch and batches yielded so far this epoch.

        With a prefetching ``DataLoader`` the sampler runs ahead of the training loop; a loop that resumes exactly
        should store the number of batches it consumed as ``iterations_in_epoch`` instead (as seqba.train does).
        """
        return {"epoch": self.epoch, "iterations_in_epoch": self._yielded, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at ``state["epoch"]`` after ``state["iterations_in_epoch"]`` batches.

        Raises:
            ValueError: if a key is missing (naming it), ``epoch`` or ``iterations_in_epoch`` is not a non-negative
                int, the state was saved with another seed, or it is past the end of the epoch.
        """
        missing = [key for key in ("epoch", "iterations_in_epoch") if key not in state]
        if missing:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state is missing "
                             f"{', '.join(map(repr, missing))} (got keys {sorted(state)})")
        epoch = check_count("epoch", state["epoch"])
        position = check_count("iterations_in_epoch", state["iterations_in_epoch"])
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(f"state was saved with seed={state['seed']!r}, this sampler has seed={self.seed}")
        if position > len(self):
            raise ValueError(f"iterations_in_epoch={position} is outside [0, {len(self)}]")
        self.epoch = epoch
        self._start = self._yielded = position

    @property
    def padding_efficiency(self) -> float:
        """Padding efficiency of the lengths the sampler batches on, ``num_tokens``, over all groups' batches.

        ``sum(num_tokens) / sum(len(batch) * max(num_tokens[batch]))``; the same for every epoch (ties only move
        between batches of equal length). For translation ``num_tokens = max(src_len, tgt_len)``, so this is NOT the
        efficiency of the padded source and target tensors, which pad each side to its own maximum: that one is
        :meth:`padding_efficiency_of` ``(src_lengths, tgt_lengths)`` (usually lower).
        """
        sorted_lengths = np.sort(self._lengths, kind="stable").astype(np.int64)
        offsets = self._offsets
        ends = offsets[1:] - 1
        slots = np.diff(offsets) * sorted_lengths[ends]
        return float(sorted_lengths[: offsets[-1]].sum() / max(slots.sum(), 1))

    def padding_efficiency_of(self, *lengths: np.ndarray, epoch: int | None = None) -> float:
        """Padding efficiency of tensors padded per batch, one per array of ``lengths``, over all groups' batches.

        For translation ``padding_efficiency_of(src_lengths, tgt_lengths)`` is the source+target efficiency:
        ``(sum src + sum tgt) / sum over batches of len(batch) * (max src + max tgt)`` in ``epoch`` (default: the
        current one), i.e. real tokens over the slots of the padded ``src_tokens`` and ``target`` tensors.

        Args:
            *lengths: (N,) int arrays indexed like ``num_tokens``.
            epoch: which epoch's batches; tie-breaking makes epochs differ slightly.

        Raises:
            ValueError: no arrays, or an array whose length is not N (the sampler's ``num_tokens``).
        """
        n = len(self._indices) + self.num_skipped
        if not lengths or any(np.ndim(x) != 1 or len(x) != n for x in lengths):
            raise ValueError(f"padding_efficiency_of: give one or more (N,) lengths arrays with N={n}, got shapes "
                             f"{[np.shape(x) for x in lengths]}")
        batches = self._global_batches(self.epoch if epoch is None else check_count("epoch", epoch))
        order = np.concatenate(batches)
        starts = np.r_[0, np.cumsum([len(b) for b in batches])[:-1]]
        sizes = np.array([len(b) for b in batches])
        real = slots = 0
        for x in lengths:
            x = np.asarray(x, dtype=np.int64)[order]
            real += int(x.sum())
            slots += int((np.maximum.reduceat(x, starts) * sizes).sum())
        return real / max(slots, 1)


class FixedSizeBatchSampler(TokenBudgetBatchSampler):
    """Batches of ``batch_size`` distinct samples (the paper's B for images), no lengths needed.

    A seeded shuffled partition of ``range(num_samples)`` into batches of ``batch_size`` (timm's and DeiT's image
    loaders; torch's ``BatchSampler(RandomSampler(...))``), deterministic per ``(seed, epoch)``, resumable and with
    BA rank groups exactly as :class:`TokenBudgetBatchSampler`, which it specialises (all lengths equal, a sentence
    limit of ``batch_size``). Wrap it in :class:`seqba.repeat.RepeatBatchSampler` for M augmented copies per sample.

    ``drop_last=False``: every sample once per epoch; the last batch may be short, and when the number of batches
    is not a multiple of the number of groups the largest batches are split in two (so batch sizes then differ).
    ``drop_last=True``: only full batches, and only as many as fill every group equally; the dropped samples are the
    tail of the epoch's permutation, so they change from epoch to epoch.

    Args:
        num_samples: N, the dataset size.
        batch_size: distinct samples per batch, before BA repetition.
        drop_last: drop the incomplete batch (and batches that do not fill every group).
        shuffle, seed, num_replicas, rank, group_size, yield_arrays: as :class:`TokenBudgetBatchSampler`.

    Attributes:
        batch_size, drop_last: as given (torch's ``BatchSampler`` has them; accelerate reads them).

    Raises:
        ValueError: ``num_samples`` or ``batch_size`` not an int >= 1, or too few samples to give every group a
            batch (a full one with ``drop_last``); the other arguments as :class:`TokenBudgetBatchSampler`.
    """

    def __init__(self, num_samples: int, batch_size: int, *, drop_last: bool = False, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0, group_size: int = 1,
                 yield_arrays: bool = False) -> None:
        for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if check_count(name, value) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        super().__init__(np.zeros(int(num_samples), dtype=np.uint8), None, max_sentences=self.batch_size,
                         shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank, group_size=group_size,
                         yield_arrays=yield_arrays)

    def _build_offsets(self, sorted_lengths: np.ndarray) -> np.ndarray:
        if not self.drop_last:
            return super()._build_offsets(sorted_lengths)
        full = len(sorted_lengths) // self.batch_size // self.num_groups * self.num_groups
        if full == 0:
            raise ValueError(f"{len(sorted_lengths)} samples cannot fill one batch of {self.batch_size} for each of "
                             f"{self.num_groups} groups with drop_last=True")
        return np.arange(full + 1, dtype=np.int64) * self.batch_size

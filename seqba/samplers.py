"""Batch Augmentation (BA) batching core: token-budget batches, M-fold repetition, distributed groups.

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
device once, and expand there with :func:`repeat_batch`, which gives exactly what the index-level
:class:`RepeatBatchSampler` gives after collation.

Distributed BA: ``num_replicas`` ranks form ``num_replicas // group_size`` groups of ``group_size`` consecutive
ranks; ranks of one group get identical batches (the paper's "every M nodes load the same batch") while
groups get disjoint ones. The sampler seed must be the same on all ranks; dropout and augmentation seeds must
differ (see :func:`seqba.distributed.worker_seed`). Do not pass these batch samplers through
``accelerator.prepare``: its ``BatchSamplerShard`` would shard them again.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from seqba.distributed import rank_group

__all__ = ["TokenBudgetBatchSampler", "RepeatBatchSampler", "repeat_batch", "batch_boundaries", "LAYOUTS"]

logger = logging.getLogger(__name__)

LAYOUTS = ("adjacent", "tiled")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _check_repeats(repeats: Any) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")


def _repeat_indices(indices: np.ndarray, repeats: int, layout: str) -> np.ndarray:
    if layout == "adjacent":
        return np.repeat(indices, repeats)
    return np.tile(indices, repeats)


def batch_boundaries(
    sorted_lengths: np.ndarray,
    max_tokens: int | None,
    max_sentences: int | None = None,
    required_batch_size_multiple: int = 1,
) -> np.ndarray:
    """Cut a length-sorted sequence of samples into token-budget batches; return the batch start offsets.

    Follows fairseq's ``batch_by_size`` (``fairseq/data/data_utils_fast.pyx``): samples are added in order while
    ``len(batch) * max(lengths in batch) <= max_tokens`` (padding counts) and ``len(batch) <= max_sentences``;
    when the next sample would overflow, the batch is cut to the largest multiple of
    ``required_batch_size_multiple`` that it holds (``max(m * (n // m), n % m)``) and the remainder starts the
    next batch. Unlike the Cython loop, the cut repeats while the remainder would still overflow, so every batch
    honours the budget. The last batch is emitted whole. Nothing is dropped.

    The work is vectorized per run of equal lengths: a Python loop over distinct lengths (at most
    ``max_tokens`` of them), numpy for the cuts inside a run.

    Args:
        sorted_lengths: (N,) int, non-decreasing sample lengths in tokens (each ``<= max_tokens``).
        max_tokens: token budget per batch, padding included; ``None`` for no token limit.
        max_sentences: sentence limit per batch; ``None`` for no limit.
        required_batch_size_multiple: preferred multiple of batch sizes.

    Returns:
        (num_batches + 1,) int64 offsets: batch ``i`` is ``sorted[offsets[i]:offsets[i + 1]]``.

    Raises:
        ValueError: if lengths are not sorted, or a sample alone exceeds ``max_tokens``, or neither limit is given.
    """
    lengths = np.asarray(sorted_lengths, dtype=np.int64)
    n = len(lengths)
    if max_tokens is None and max_sentences is None:
        raise ValueError("give max_tokens or max_sentences (or both)")
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    if np.any(lengths[1:] < lengths[:-1]):
        raise ValueError("sorted_lengths must be non-decreasing")
    if max_tokens is not None and lengths[-1] > max_tokens:
        raise ValueError(f"a sample of {lengths[-1]} tokens exceeds max_tokens={max_tokens}")
    mult = required_batch_size_multiple
    sent_cap = max_sentences if max_sentences is not None else n

    def mod_len(c: int) -> int:
        return max(mult * (c // mult), c % mult)

    run_starts = np.flatnonzero(np.r_[True, lengths[1:] != lengths[:-1]])
    run_ends = np.r_[run_starts[1:], n]
    run_lengths = lengths[run_starts]
    if max_tokens is None:
        caps = np.full(len(run_starts), sent_cap, dtype=np.int64)
    else:
        caps = np.minimum(sent_cap, max_tokens // np.maximum(run_lengths, 1))

    pieces: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
    pending = 0  # samples in the open batch, ending just before the current position
    for pos, end, cap in zip(run_starts.tolist(), run_ends.tolist(), caps.tolist()):
        # Adding the run's first sample makes `cap` the limit for the open batch: cut while it overflows.
        while pending + 1 > cap:
            cut = mod_len(pending)
            pieces.append(np.array([pos - pending + cut], dtype=np.int64))
            pending -= cut
        run = end - pos
        first = cap - pending  # index in the run whose arrival overflows the open batch
        if first < run:
            period = mod_len(cap)  # steady state: each cut emits mod_len(cap), the rest rolls over
            count = (run - 1 - first) // period + 1
            start = pos - pending
            pieces.append(start + period * np.arange(1, count + 1, dtype=np.int64))
            pending = pending + run - count * period
        else:
            pending += run
    offsets = np.concatenate(pieces)
    if offsets[-1] != n:
        offsets = np.append(offsets, n)
    return offsets


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

    Raises:
        ValueError: on invalid arguments (naming the value), or for a sample longer than ``max_tokens`` (naming its
            index, its length and the budget) unless ``skip_invalid_size``, or when there are fewer samples than
            groups.
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
    ) -> None:
        lengths = np.asarray(num_tokens)
        if lengths.ndim != 1:
            raise ValueError(f"num_tokens must be 1-D, got shape {lengths.shape}")
        if lengths.size and (not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 0):
            raise ValueError("num_tokens must hold non-negative integers")
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
        self.seed = int(seed)
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
        offsets = batch_boundaries(sorted_lengths, self.max_tokens, self.max_sentences, self.required_batch_size_multiple)
        self._offsets = self._equalize(offsets)
        self.epoch = 0
        self._start = 0  # batches of the current epoch to skip on the next __iter__ (resume)
        self._yielded = 0  # batches yielded so far in the current epoch
        self._cache: tuple[int, list[np.ndarray]] | None = None

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
        """Select the epoch whose batches the next ``__iter__`` yields (call before each epoch, as DDP samplers)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
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
        order = self._indices[order]
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

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.batches()
        start, self._start = self._start, 0
        self._yielded = start
        for batch in mine[start:]:
            self._yielded += 1
            yield batch.tolist()

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
            ValueError: if the state was saved with another seed or is past the end of the epoch.
        """
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed={state['seed']}, this sampler has seed={self.seed}")
        position = int(state["iterations_in_epoch"])
        if not 0 <= position <= len(self):
            raise ValueError(f"iterations_in_epoch={position} is outside [0, {len(self)}]")
        self.epoch = int(state["epoch"])
        self._start = self._yielded = position

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / padded slots (``len(batch) * max length``) over all batches of the epoch."""
        sorted_lengths = np.sort(self._lengths, kind="stable").astype(np.int64)
        ends = self._offsets[1:] - 1
        slots = np.diff(self._offsets) * sorted_lengths[ends]
        return float(sorted_lengths.sum() / max(slots.sum(), 1))


class RepeatBatchSampler:
    """Yield every batch of a wrapped batch sampler with each index repeated ``repeats`` (M) times.

    ``layout="adjacent"`` gives ``[a, a, a, b, b, b]``; ``layout="tiled"`` gives ``[a, b, a, b, a, b]``
    (copy-major: copy ``c`` of the batch is the slice ``[c * B, (c + 1) * B)``). ``repeats=1`` is the identity.
    Use it as ``DataLoader(dataset, batch_sampler=RepeatBatchSampler(sampler, M))``: the dataset is asked for each
    copy, so a transform in the dataset gives every copy its own augmentation (Hoffer et al. 2020, Sec. 3).

    Args:
        batch_sampler: any iterable of index lists (a torch ``BatchSampler``, a ``TokenBudgetBatchSampler``, a
            list of lists). ``len``, ``set_epoch``, ``state_dict`` and ``load_state_dict`` are forwarded to it.
        repeats: M, an int >= 1.
        layout: ``"adjacent"`` or ``"tiled"``.

    Raises:
        ValueError: for ``repeats`` that is not an int >= 1 or an unknown ``layout``.
    """

    def __init__(self, batch_sampler: Iterable[Sequence[int]], repeats: int, *, layout: str = "adjacent") -> None:
        _check_repeats(repeats)
        _check_layout(layout)
        self.batch_sampler = batch_sampler
        self.repeats = int(repeats)
        self.layout = layout

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            if self.repeats == 1:
                yield list(batch)
            else:
                yield _repeat_indices(np.asarray(batch), self.repeats, self.layout).tolist()

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def _forward(self, name: str):
        method = getattr(self.batch_sampler, name, None)
        if method is None:
            raise AttributeError(f"the wrapped {type(self.batch_sampler).__name__} has no {name}()")
        return method

    def set_epoch(self, epoch: int) -> None:
        self._forward("set_epoch")(epoch)

    def state_dict(self) -> dict:
        return self._forward("state_dict")()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._forward("load_state_dict")(state)


def repeat_batch(
    batch: Any,
    repeats: int,
    layout: str = "adjacent",
    *,
    count_keys: Sequence[str] = ("ntokens", "nsentences"),
) -> Any:
    """Expand an already collated batch of B samples to M·B rows, on whatever device it lives.

    The same repetition as :class:`RepeatBatchSampler`, applied after collation: text models can move B distinct
    samples to the device once and expand there (the paper's "no extra I/O"). For a batch collated from padded
    samples the result equals collating the index-level repeated batch.

    Rules: tensors with at least one dimension are repeated along dim 0 ((B, ...) -> (M·B, ...)); dicts, tuples
    and lists are containers and are recursed into; Python numbers under a key in ``count_keys`` are per-batch
    counts and are multiplied by M; anything else (0-d tensors, strings, other scalars) is returned unchanged.

    Args:
        batch: a tensor, or a dict / tuple / list of them (nested).
        repeats: M, an int >= 1 (``1`` returns the batch unchanged).
        layout: ``"adjacent"`` (``[a, a, b, b]``) or ``"tiled"`` (``[a, b, a, b]``).
        count_keys: dict keys whose numeric values scale with the number of rows.

    Raises:
        ValueError: for bad ``repeats`` or ``layout``.
    """
    _check_repeats(repeats)
    _check_layout(layout)
    if repeats == 1:
        return batch

    def expand(x: Any, key: str | None = None) -> Any:
        if isinstance(x, torch.Tensor):
            if x.dim() == 0:
                return x
            if layout == "adjacent":
                return x.repeat_interleave(repeats, dim=0)
            return x.repeat(repeats, *([1] * (x.dim() - 1)))
        if isinstance(x, Mapping):
            return type(x)({k: expand(v, k) for k, v in x.items()})
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
            return type(x)(*(expand(v) for v in x))
        if isinstance(x, (tuple, list)):
            return type(x)(expand(v) for v in x)
        if key in count_keys and isinstance(x, (int, float)) and not isinstance(x, bool):
            return x * repeats
        return x

    return expand(batch)

"""M-fold repetition for Batch Augmentation: of index batches, of collated batches, of (L, B) token streams.

Batch Augmentation (Hoffer et al., "Augment your batch", CVPR 2020) puts M copies ("repeats") of each of B samples
in one batch. Three ways to get them, all with the same row order:

* :class:`RepeatBatchSampler` repeats the INDICES of each batch, so a dataset's transform augments every copy;
* :func:`repeat_batch` repeats an already collated batch on the device along its batch axis ``dim`` (dim 0 for
  batch-first tensors, ``dim=1`` for time-major ``(T, B)`` tensors as ``nn.LSTM`` without ``batch_first`` takes);
* :func:`repeat_streams` adds the copies of ``(L, B)`` token streams as more columns (language models that carry
  a hidden state from one window to the next; the state is then sized ``B * M``).

Layouts along the batch axis (``adjacent`` ``[a, a, b, b]`` or ``tiled`` ``[a, b, a, b]``) and all their index
arithmetic live in :mod:`seqba.layout` (:class:`~seqba.layout.CopyLayout`); this module applies them.

Only torch and numpy are needed here.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from torch import Tensor

from seqba.layout import LAYOUTS, CopyLayout, check_layout, check_repeats

__all__ = ["RepeatBatchSampler", "repeat_batch", "repeat_streams", "LAYOUTS", "EPOCH_BUDGETS", "check_layout",
           "check_repeats"]

EPOCH_BUDGETS = ("samples", "rows")


def refuse_accelerate_reshard(sampler: Any, caller: Any) -> None:
    """Raise if a batch sampler that already shards by rank is being iterated by Accelerate's ``BatchSamplerShard``.

    ``accelerator.prepare(DataLoader(..., batch_sampler=seqba_sampler))`` wraps the batch sampler in
    ``BatchSamplerShard``, which keeps every ``num_processes``-th batch of what it iterates: a seqba sampler built
    with ``num_replicas=world_size`` has already done so, and the pair silently trains on about 1/world_size of
    the data. The check looks at the object whose code called ``iter(sampler)`` (``caller``: a frame), so it costs
    nothing per batch and needs no accelerate import.

    Raises:
        RuntimeError: naming the sampler, its ``num_replicas`` and the two fixes.
    """
    shard = caller.f_locals.get("self") if caller is not None else None
    if type(shard).__name__ != "BatchSamplerShard" or getattr(shard, "num_processes", 1) <= 1:
        return
    inner = sampler
    while inner is not None and not hasattr(inner, "num_replicas"):
        inner = getattr(inner, "batch_sampler", None)
    replicas = getattr(inner, "num_replicas", 1)
    if replicas > 1:
        raise RuntimeError(
            f"{type(sampler).__name__} wraps a {type(inner).__name__} that already shards by rank "
            f"(num_replicas={replicas}), and accelerate's BatchSamplerShard is sharding it again over "
            f"{shard.num_processes} processes: each rank would train on about 1/{shard.num_processes} of its batches. "
            "Do not pass this DataLoader through accelerator.prepare; use "
            "seqba.integrations.accelerate.prepare_data_loader(accelerator, loader), or build the sampler with "
            "num_replicas=1 and let Accelerate shard it (without BA rank groups)."
        )


class RepeatBatchSampler:
    """Yield every batch of a wrapped batch sampler with each index repeated ``repeats`` (M) times.

    ``layout="adjacent"`` gives ``[a, a, a, b, b, b]``; ``layout="tiled"`` gives ``[a, b, a, b, a, b]``
    (copy-major: copy ``c`` of the batch is the slice ``[c * B, (c + 1) * B)``). ``repeats=1`` is the identity.
    Use it as ``DataLoader(dataset, batch_sampler=RepeatBatchSampler(sampler, M))``: the dataset is asked for each
    copy, so a transform in the dataset gives every copy its own augmentation (Hoffer et al. 2020, Sec. 3).
    Batches come out as the wrapped sampler gives them: int64 numpy arrays stay arrays, anything else becomes a list.

    Epoch budget (``epoch_budget``):

    * ``"samples"`` (BA, the default): an epoch is every batch of the wrapped sampler, so every sample is seen once
      per epoch in M copies: M times the rows of M=1, the same number of steps.
    * ``"rows"`` (DeiT's repeated augmentation, ``RASampler``): an epoch is the first ``ceil(len / M)`` batches of
      the wrapped sampler's epoch, so it has the rows (and the steps) of M=1 and sees about 1/M of the distinct
      samples, a different subset each epoch when the wrapped sampler shuffles with its epoch.

    Args:
        batch_sampler: any iterable of index lists (a torch ``BatchSampler``, a ``TokenBudgetBatchSampler``, a
            list of lists). ``len``, ``set_epoch``, ``state_dict`` and ``load_state_dict`` are forwarded to it;
            ``set_epoch`` does nothing when it has none (as torch's samplers), the state methods raise.
        repeats: M, an int >= 1.
        layout: ``"adjacent"`` or ``"tiled"``.
        epoch_budget: ``"samples"`` or ``"rows"``, see above.

    Raises:
        ValueError: for ``repeats`` that is not an int >= 1, an unknown ``layout`` or ``epoch_budget``.
        RuntimeError: when iterated by accelerate's ``BatchSamplerShard`` while the wrapped sampler already shards
            by rank (see :func:`refuse_accelerate_reshard`).
    """

    def __init__(self, batch_sampler: Iterable[Sequence[int]], repeats: int, *, layout: str = "adjacent",
                 epoch_budget: str = "samples") -> None:
        self.copy_layout = CopyLayout(repeats, layout)
        if epoch_budget not in EPOCH_BUDGETS:
            raise ValueError(f"epoch_budget must be one of {EPOCH_BUDGETS}, got {epoch_budget!r}")
        self.batch_sampler = batch_sampler
        self.repeats = int(repeats)
        self.layout = layout
        self.epoch_budget = epoch_budget

    def __iter__(self) -> Iterator[list[int] | np.ndarray]:
        refuse_accelerate_reshard(self, sys._getframe(1))
        return self._batches()

    def _batches(self) -> Iterator[list[int] | np.ndarray]:
        limit = len(self) if self.epoch_budget == "rows" else None
        for k, batch in enumerate(self.batch_sampler):
            if limit is not None and k >= limit:
                return
            if isinstance(batch, np.ndarray):
                yield batch if self.repeats == 1 else self.copy_layout.expand_indices(batch)
            elif self.repeats == 1:
                yield list(batch)
            else:
                yield self.copy_layout.expand_indices(np.asarray(batch)).tolist()

    def __len__(self) -> int:
        """Batches per epoch: ``len(batch_sampler)``, or ``ceil(len(batch_sampler) / M)`` for ``"rows"``."""
        n = len(self.batch_sampler)  # type: ignore[arg-type]
        return math.ceil(n / self.repeats) if self.epoch_budget == "rows" else n

    def _forward(self, name: str):
        method = getattr(self.batch_sampler, name, None)
        if method is None:
            raise NotImplementedError(
                f"RepeatBatchSampler.{name}: the wrapped {type(self.batch_sampler).__name__} has no {name}(); "
                "wrap a seqba TokenBudgetBatchSampler or FixedSizeBatchSampler, or store the epoch and the number "
                "of batches consumed yourself")
        return method

    def set_epoch(self, epoch: int) -> None:
        """Forward to the wrapped sampler's ``set_epoch``; do nothing when it has none."""
        method = getattr(self.batch_sampler, "set_epoch", None)
        if method is not None:
            method(epoch)

    def state_dict(self) -> dict:
        """The wrapped sampler's ``state_dict()``.

        Raises:
            NotImplementedError: when the wrapped sampler has no ``state_dict``, naming its type.
        """
        return self._forward("state_dict")()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The wrapped sampler's ``load_state_dict(state)``.

        Raises:
            NotImplementedError: when the wrapped sampler has no ``load_state_dict``, naming its type.
        """
        self._forward("load_state_dict")(state)


def repeat_batch(
    batch: Any,
    repeats: int,
    layout: str = "adjacent",
    *,
    dim: int = 0,
    count_keys: Sequence[str] = ("ntokens", "nsentences"),
) -> Any:
    """Expand an already collated batch of B samples to M·B along its batch axis, on whatever device it lives.

    The same repetition as :class:`RepeatBatchSampler`, applied after collation: text models can move B distinct
    samples to the device once and expand there (the paper's "no extra I/O"). For a batch collated from padded
    samples the result equals collating the index-level repeated batch.

    Rules: tensors with at least one dimension are repeated along ``dim`` ((B, ...) -> (M·B, ...) for ``dim=0``;
    (T, B) -> (T, M·B) for time-major ``dim=1``); dicts, tuples and lists are containers and are recursed into;
    Python numbers under a key in ``count_keys`` are per-batch counts and are multiplied by M; anything else
    (0-d tensors, strings, other scalars) is returned unchanged. A recurrent model fed the result must start
    from a hidden state sized M·B (e.g. ``model.init_hidden(B * M)``).

    Args:
        batch: a tensor, or a dict / tuple / list of them (nested).
        repeats: M, an int >= 1 (``1`` returns the batch unchanged).
        layout: ``"adjacent"`` (``[a, a, b, b]``) or ``"tiled"`` (``[a, b, a, b]``), along ``dim``.
        dim: the batch axis of every tensor in ``batch``; negative counts from the end.
        count_keys: dict keys whose numeric values scale with the number of rows.

    Raises:
        ValueError: for bad ``repeats``, ``layout`` or ``dim`` (not an int), or a tensor that has no axis ``dim``
            (naming its shape); a 1-D flattened target next to (T, B) data is such a tensor.
    """
    return CopyLayout(repeats, layout).expand_batch(batch, dim=dim, count_keys=count_keys)


def repeat_streams(batched: Tensor, repeats: int) -> Tensor:
    """Add the M BA copies of (L, B) token streams as columns, copy-major: (L, B) -> (L, B * M).

    Column ``c * B + b`` is copy ``c`` of stream ``b``, so copy ``c`` is the column slice ``[c * B, (c + 1) * B)``
    (the layout ``seqba.models.awd_lstm.AWDLSTM(per_copy_masks=True)`` assumes); equal to
    ``repeat_batch(batched, repeats, "tiled", dim=1)``. Use it once on the whole ``batchify``-ed corpus (see
    :mod:`seqba.data.lm` for a diagram) and size the model's hidden state for ``B * M`` columns.

    Args:
        batched: (L, B) tokens, e.g. from ``batchify`` (pytorch/examples ``word_language_model``, awd-lstm-lm).
        repeats: M, an int >= 1.

    Raises:
        ValueError: ``batched`` not 2-D or ``repeats`` not an int >= 1.
    """
    if batched.dim() != 2:
        raise ValueError(f"repeat_streams: batched must be 2-D (L, B), got shape {tuple(batched.shape)}")
    return CopyLayout(repeats, "tiled").expand(batched, dim=1)  # (L, M * B)

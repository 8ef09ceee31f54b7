"""Random numbers of loader-side work seeded per batch, so that any resume point reproduces them.

A ``DataLoader`` worker seeds its RNGs once, when it starts, and then draws for the batches it is given in turn:
worker ``w`` of ``W`` gets batches ``w, w + W, ...`` of the iteration. A run resumed at batch ``n`` of an epoch
starts new workers at batch ``n``, so every batch after it sees another RNG stream than in the uninterrupted run
(the augmentations, and so the losses, differ). The fix, as in torchdata's ``StatefulDataLoader`` and timm's
per-epoch worker seeding, is to make the stream a function of the position: each batch's items are fetched with
Python, numpy and torch seeded from ``(seed, epoch, batch index in the epoch)``::

    batch sampler        [i0, i1, ...]                    batch k of the epoch
    NumberedBatches  ->  [(k, i0), (k, i1), ...]
    SeededBatchFetch ->  seed RNGs with SeedSequence([seed, epoch, k]); [dataset[i0], dataset[i1], ...]

The same batch then gets the same random numbers whatever ``num_workers`` is, in a worker or in the main process,
and after any resume. In the main process (``num_workers=0``) the global RNG states are saved and restored around
the fetch, so loading does not disturb the training step's dropout stream.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import numpy as np
import torch

__all__ = ["NumberedBatches", "SeededBatchFetch", "batch_seed"]


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of batch ``batch`` (0-based, within ``epoch``) for base seed ``seed``: a non-negative int < 2**63."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(batch)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class NumberedBatches:
    """Wraps a batch sampler: batch ``k`` of the iteration (counted from ``start``) becomes ``[(k, i), ...]``.

    Args:
        batch_sampler: yields lists of dataset indices (a seqba sampler already positioned at batch ``start``).
        start: the position of its first batch in the epoch (the resume offset).
    """

    def __init__(self, batch_sampler: Any, start: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.start = start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for k, indices in enumerate(self.batch_sampler, self.start):
            yield [(k, int(i)) for i in indices]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class SeededBatchFetch(torch.utils.data.Dataset):
    """A map-style dataset whose batches are fetched under RNGs seeded by :func:`batch_seed`.

    ``DataLoader`` calls :meth:`__getitems__` with one batch of :class:`NumberedBatches` keys; the items are
    ``dataset[i]`` in order. Python's ``random``, numpy's global RNG and torch's CPU generator are seeded for the
    batch and restored afterwards.

    Args:
        dataset: the map-style dataset (its ``__getitem__`` may draw from the global RNGs, e.g. augmentation).
        seed: this rank's loader seed (distinct per rank, so that the members of a BA group differ).
        epoch: the epoch being iterated.
    """

    def __init__(self, dataset: Any, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[Any]:
        if not keys:
            return []
        seed = batch_seed(self.seed, self.epoch, keys[0][0])
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            try:
                return [self.dataset[i] for _, i in keys]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

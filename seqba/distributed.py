"""Rank groups and per-rank seeds for distributed Batch Augmentation.

The paper's distributed BA: "every M nodes load the same batch". seqba expresses it with ``group_size``:
ranks ``[g * group_size, (g + 1) * group_size)`` form group ``g``. Inside a group

* the SAMPLER seed is shared, so all members draw the same batch (``TokenBudgetBatchSampler(..., seed=seed,
  num_replicas=world_size, rank=rank, group_size=group_size)``), and
* the DROPOUT / AUGMENTATION seed differs, so the copies differ: seed torch with ``worker_seed(seed, rank)``.

Recipe for Accelerate users (do NOT hand the batch sampler to ``accelerator.prepare``: its ``BatchSamplerShard``
would shard the already sharded batches, and seqba's samplers raise ``RuntimeError`` when iterated that way; use
:func:`seqba.integrations.accelerate.prepare_data_loader` for device placement without re-sharding)::

    accelerator = Accelerator()
    sampler = TokenBudgetBatchSampler(num_tokens, 4096, seed=cfg.seed, group_size=2,
                                      num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    loader = prepare_data_loader(accelerator, DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))
    model, optimizer = accelerator.prepare(model, optimizer)
    torch.manual_seed(worker_seed(cfg.seed, accelerator.process_index))           # distinct dropout masks

Only torch and numpy are needed here.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["RankGroup", "rank_group", "worker_seed", "seed_worker_rngs", "main_process_first"]


@dataclass(frozen=True)
class RankGroup:
    """Where a rank sits among the BA groups: ``group`` in ``[0, num_groups)``, ``index`` in ``[0, group_size)``."""

    group: int
    num_groups: int
    index: int
    group_size: int


def rank_group(rank: int, world_size: int, group_size: int = 1) -> RankGroup:
    """Group of ``rank`` when ``world_size`` ranks are split into groups of ``group_size`` consecutive ranks.

    Raises:
        ValueError: if ``group_size`` does not divide ``world_size`` or ``rank`` is out of range.
    """
    if group_size < 1 or world_size % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide world_size={world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, {world_size})")
    return RankGroup(rank // group_size, world_size // group_size, rank % group_size, group_size)


def worker_seed(base_seed: int, rank: int) -> int:
    """A dropout/augmentation seed for ``rank``, distinct per rank and reproducible from ``base_seed``.

    Derived with numpy's ``SeedSequence`` (so seeds of neighbouring ranks are decorrelated, unlike
    ``base_seed + rank``). Returns a non-negative int below 2**63.
    """
    state = np.random.SeedSequence([int(base_seed), int(rank)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def seed_worker_rngs(base_seed: int, rank: int) -> int:
    """Seed Python, numpy and torch (all devices) with :func:`worker_seed`; return the seed used."""
    seed = worker_seed(base_seed, rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


@contextlib.contextmanager
def main_process_first(accelerator: Any) -> Iterator[None]:
    """Run the body on the main process first, then on the others; an error there stops every rank with it.

    Accelerate's ``main_process_first`` leaves the other ranks waiting in a barrier when the main process raises
    (say, while preparing a corpus): they then die in the collective with a gloo/NCCL traceback once it exits. Here
    the main process shares the outcome first (``broadcast_object_list``), so every rank raises the same error
    (its type and message; an unexpected one as ``RuntimeError``) before any other collective, and the command line
    prints it once (rank 0).
    """
    if accelerator.num_processes == 1:
        yield
        return
    from accelerate.utils import broadcast_object_list  # collective: every rank calls it exactly once

    if accelerator.is_main_process:
        try:
            yield
        except Exception as err:
            broadcast_object_list([(type(err), str(err))])
            raise
        broadcast_object_list([None])
        return
    outcome = broadcast_object_list([None])[0]
    if outcome is not None:
        kind, message = outcome
        try:
            error = kind(message)
        except Exception:  # noqa: BLE001 - an exception type that takes other arguments
            error = RuntimeError(f"the main process failed: {kind.__name__}: {message}")
        raise error
    yield

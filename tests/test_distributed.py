"""Two CPU processes (torch.distributed, gloo): one BA group gets identical batches but different dropout masks."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seqba import RepeatBatchSampler, TokenBudgetBatchSampler
from seqba.distributed import rank_group, seed_worker_rngs, worker_seed

from runs import free_port


def _worker(rank, world, port, group_size, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        lengths = np.random.default_rng(0).integers(1, 30, 200)
        sampler = RepeatBatchSampler(TokenBudgetBatchSampler(lengths, 64, seed=7, num_replicas=world, rank=rank,
                                                             group_size=group_size), repeats=2)
        sampler.set_epoch(1)
        batches = [torch.tensor(b) for b in sampler]
        seed_worker_rngs(7, rank)
        mask = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True) > 0
        gathered_batches = [None] * world
        dist.all_gather_object(gathered_batches, [b.tolist() for b in batches])
        masks = [torch.zeros(64, dtype=torch.bool) for _ in range(world)]
        dist.all_gather(masks, mask)
        if rank == 0:
            torch.save({"batches": gathered_batches, "masks": masks}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("group_size", [1, 2])
def test_two_process_groups(tmp_path, group_size):
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, free_port(), group_size, str(out)), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    b0, b1 = result["batches"]
    assert len(b0) == len(b1) > 0
    if group_size == 2:
        assert b0 == b1, "ranks of one BA group must load identical batches"
    else:
        assert not set(i for b in b0 for i in b) & set(i for b in b1 for i in b), "groups must be disjoint"
    assert not torch.equal(result["masks"][0], result["masks"][1]), "dropout masks must differ between ranks"


def test_rank_group_and_worker_seed():
    assert rank_group(3, 4, 2) == rank_group(3, 4, 2)
    g = rank_group(3, 4, 2)
    assert (g.group, g.num_groups, g.index) == (1, 2, 1)
    with pytest.raises(ValueError, match="group_size=3"):
        rank_group(0, 4, 3)
    seeds = {worker_seed(1, r) for r in range(64)}
    assert len(seeds) == 64 and worker_seed(1, 0) == worker_seed(1, 0)

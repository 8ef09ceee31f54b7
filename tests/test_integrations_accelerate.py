"""Rank-sharded seqba samplers and Accelerate: prepare() refuses them, prepare_data_loader() keeps all the data."""
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from seqba import TokenBudgetBatchSampler
from runs import accelerate_launch_two

ROOT = Path(__file__).resolve().parents[1]


def accelerate_launch(script: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Two gloo CPU processes (`--cpu --num_processes 2` would silently run one)."""
    return subprocess.run([*accelerate_launch_two(), str(script), *args],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=timeout)


def test_two_processes_prepare_refuses_and_helper_keeps_every_sample(tmp_path):
    proc = accelerate_launch(ROOT / "tests" / "accelerate_worker.py", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["world"] == 2
        for name in ("plain", "repeated"):
            assert rank["errors"][name] is not None and "already shards by rank (num_replicas=2)" in \
                rank["errors"][name], rank["errors"]
    seen = Counter(i for rank in ranks for batch in rank["seen"] for i in batch)
    assert seen == Counter({i: 2 for i in range(400)}), "every sample, in M=2 copies, across the two ranks"
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"])
    expected = TokenBudgetBatchSampler(np.random.default_rng(0).integers(1, 40, 400), 128, seed=1, num_replicas=2,
                                       rank=1)
    expected.set_epoch(1)
    assert [sorted(set(b)) for b in ranks[1]["seen"]] == [sorted(b) for b in expected]


def test_helper_checks_the_sampler_matches_the_accelerator():
    from accelerate import Accelerator

    from seqba.integrations.accelerate import prepare_data_loader

    accelerator = Accelerator(cpu=True)
    wrong = TokenBudgetBatchSampler([3, 4, 5, 6], 8, num_replicas=2, rank=1)
    with pytest.raises(ValueError, match=r"\(num_replicas, rank\) = \(2, 1\).*1 processes"):
        prepare_data_loader(accelerator, DataLoader(range(4), batch_sampler=wrong))
    with pytest.raises(ValueError, match="accelerator.prepare"):
        prepare_data_loader(accelerator, DataLoader(range(4), batch_size=2))
    # --- README: Accelerate ---
    sampler = TokenBudgetBatchSampler([3, 4, 5, 6], 8, shuffle=False, num_replicas=accelerator.num_processes,
                                      rank=accelerator.process_index)
    loader = prepare_data_loader(accelerator, DataLoader(range(4), batch_sampler=sampler))  # not .prepare(loader)
    # --- end ---
    assert [b.tolist() for b in loader] == [[0, 1], [2], [3]]

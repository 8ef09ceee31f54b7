"""Two gloo processes make the same update as one process on the union of their batches.

Each rank sums its loss over its own rows; DDP averages the gradients over the ranks, and the loop multiplies them
by ``world_size / total`` with ``total`` the target tokens of the update summed over the ranks (seqba.trainer's
gradient normalisation). The result must be the gradient of the mean loss per token of the union batch, whatever
the ranks' batch sizes. Tiny Transformer, M=2, dropout 0, SGD with momentum: the second update also goes through
the optimizer state.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from equivalence import assert_same_updates, build_trainer, parameters, same_weights, union_batch, updates
from runs import accelerate_launch_two, ROOT, data_dir, recipe  # noqa: F401 (fixtures)

WORKER = Path(__file__).with_name("union_worker.py")
UPDATES = 2  # union_worker.UPDATES
OVERRIDES = ["ba.repeats=2", "ba.group_size=1", "train.max_updates=2"]


def test_two_processes_give_the_update_of_the_union_batch(recipe, tmp_path):
    out = tmp_path / "launch"
    out.mkdir()
    proc = subprocess.run([*accelerate_launch_two(), str(WORKER), str(recipe),
                           str(out), *OVERRIDES], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    launched = [[torch.load(out / f"params{u}_rank{r}.pt", weights_only=True) for r in range(2)] for u in range(UPDATES + 1)]
    assert all(same_weights(rank0, rank1) for rank0, rank1 in launched)  # DDP keeps the ranks' weights equal

    single = build_trainer(recipe, *OVERRIDES, f"output_dir={tmp_path / 'single'}")
    before = parameters(single)
    assert same_weights(before, launched[0][0])  # the same initial weights
    for update in range(1, UPDATES + 1):
        ids = [[i for batch in r["ids"][update - 1] for i in batch] for r in ranks]
        assert not set(ids[0]) & set(ids[1]), "group_size=1: the ranks read different sentences"
        logs = [r["logs"][update - 1] for r in ranks]
        assert logs[0]["sample_size"] != logs[1]["sample_size"], \
            "ranks of equal batch sizes would not tell a per-rank normalisation from the right one"
        want = single.train_step([union_batch(single, ids[0] + ids[1])])
        assert want["sample_size"] == logs[0]["sample_size"] + logs[1]["sample_size"]
        assert want["loss_sum"] == pytest.approx(logs[0]["loss_sum"] + logs[1]["loss_sum"], rel=1e-5)
        after = parameters(single)
        assert_same_updates(updates(launched[update - 1][0], launched[update][0]), updates(before, after))
        assert logs[0]["gnorm"] == logs[1]["gnorm"] == pytest.approx(want["gnorm"], rel=1e-4)
        before = after

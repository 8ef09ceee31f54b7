"""The language-model and image recipes under two gloo processes, with and without a BA rank group."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runs import accelerate_launch_two

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "awd_lstm_ptb_small_m10": ["model.emb_size=8", "model.hidden_size=16", "model.num_layers=2", "data.batch_size=4",
                               "data.bptt=20", "train.max_updates=4", "train.validate_interval_updates=2"],
    "resnet_mnist_m4": ["train.max_updates=3", "data.batch_size=8", "model.depth=8", "model.width=4",
                        "data.eval_batch_size=64"],
}


@pytest.mark.parametrize("group_size", [1, 2])
@pytest.mark.parametrize("recipe", sorted(CASES))
def test_two_processes(recipe, group_size, tmp_path, shared_data):
    proc = subprocess.run(
        [*accelerate_launch_two(), "-m", "seqba.train",
         str(ROOT / "recipes" / f"{recipe}.yaml"), *CASES[recipe], f"ba.group_size={group_size}",
         "train.progress_bar=false", f"output_dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "SEQBA_DATA": str(shared_data)},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr and f"group_size={group_size}" in proc.stderr
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()
    # issue 19, item 4: the checkpoint records its two processes, and one process refuses to resume it (its batch
    # position counts batches of another sharding), in one line, leaving the run as it was
    if group_size != 1:
        return  # one process cannot hold a group of 2 copies: refused earlier, for that reason
    latest = max((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert json.loads((latest / "complete.json").read_text())["num_processes"] == 2
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    one = subprocess.run(
        [sys.executable, "-m", "seqba.train", str(ROOT / "recipes" / f"{recipe}.yaml"), *CASES[recipe],
         f"ba.group_size={group_size}", "train.max_updates=6", "train.progress_bar=false",
         f"output_dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "SEQBA_DATA": str(shared_data)},
        capture_output=True, text=True, timeout=600)
    errors = [line for line in one.stderr.splitlines() if line.startswith("error:")]
    assert one.returncode == 1 and len(errors) == 1 and "Traceback" not in one.stderr, one.stderr[-3000:]
    assert "2 process(es)" in errors[0] and "this run has 1" in errors[0]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before

"""The language-model and image recipes under two gloo processes, with and without a BA rank group."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m", "seqba.train",
         str(ROOT / "recipes" / f"{recipe}.yaml"), *CASES[recipe], f"ba.group_size={group_size}",
         "train.progress_bar=false", f"output_dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "SEQBA_DATA": str(shared_data)},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr and f"group_size={group_size}" in proc.stderr
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()

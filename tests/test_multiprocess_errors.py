"""Issue 19, item 17: a failure in a two-process launch is ONE ``error:`` line (rank 0's), with no traceback from any
rank (the other ranks stop quietly at the same point). ``accelerate launch`` itself then adds torchrun's failure
report; that part is the launcher's."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import accelerate_launch_two, RECIPE

ROOT = Path(__file__).resolve().parents[1]


def launch_two(*args, env=None):
    return subprocess.run([*accelerate_launch_two(), "-m", "seqba.train", *args],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)


def ranks_output(stderr):
    """Lines printed by the training processes (torchrun prefixes their tracebacks with ``[rankN]:``)."""
    return [line for line in stderr.splitlines() if line.startswith(("error:", "[rank"))]


def test_group_size_that_does_not_divide_is_one_line(tmp_path, shared_data):
    proc = launch_two(str(ROOT / "recipes" / "resnet_mnist_m4.yaml"), "train.max_updates=1", "data.batch_size=8",
                      "model.width=4", "ba.group_size=3", f"output_dir={tmp_path / 'run'}",
                      env={"SEQBA_DATA": str(shared_data)})
    assert proc.returncode != 0
    assert ranks_output(proc.stderr) == ["error: ba.group_size=3 must divide the number of processes (2)"]


def test_corpus_refused_on_rank_0_is_one_line(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "first", data=tmp_path / "data"))
    first = subprocess.run([sys.executable, "-m", "seqba.train", str(recipe), "train.max_updates=1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stderr[-2000:]
    # another run asks for the same folder built with other options: rank 0 refuses while the others wait for it
    proc = launch_two(str(recipe), "train.max_updates=1", "data.prepare.seed=5", f"output_dir={tmp_path / 'second'}")
    assert proc.returncode != 0
    lines = ranks_output(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path / "data") in lines[0], proc.stderr

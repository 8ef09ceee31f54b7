"""Helpers shared by the end-to-end tests: a tiny translation recipe, metrics readers, CLI subprocesses."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """task: translation
seed: 3
output_dir: {out}
data:
  prepared_dir: {data}
  prepare: {{preset: synthetic, vocab_size: 200, synthetic_train: 600, synthetic_valid: 40, synthetic_test: 40}}
  max_tokens: 256
model: {{d_model: 32, ffn_dim: 64, num_heads: 2, encoder_layers: 1, decoder_layers: 1, dropout: 0.2}}
optim: {{lr: 0.003, warmup_updates: 10}}
ba: {{repeats: 2}}
train: {{max_updates: 12, log_interval: 1, validate_interval_updates: 6, progress_bar: false}}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.fixture
def recipe(tmp_path, data_dir):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", data=data_dir))
    return path


def losses(run_dir):
    """step -> training loss from metrics.jsonl (the last record wins)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


KILLRUN = Path(__file__).with_name("killrun.py")


def run_module(module, *args, env=None, check=True):
    """``python -m module args`` (module ``killrun``: tests/killrun.py, which SIGKILLs the run on request)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    command = [sys.executable, str(KILLRUN)] if module == "killrun" else [sys.executable, "-m", module]
    proc = subprocess.run([*command, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a test's own rendezvous: ``MASTER_PORT`` or ``--main_process_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch_two() -> list[str]:
    """The command prefix of ``accelerate launch`` with two gloo CPU processes (``--cpu --num_processes 2`` would
    silently run one), on a port of its own: a port held by an earlier launch (or in TIME_WAIT) cannot fail it with
    EADDRINUSE, as Accelerate's fixed default 29500 did."""
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())]

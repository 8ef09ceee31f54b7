"""A task family outside seqba (``tests/toy_task.py``, named by module path in its recipe) through every command:
``seqba.train``, ``seqba.eval`` (its own option; another family's refused), ``seqba.analyze grad-correlation`` and
``seqba.compare``, each as the user runs it (a subprocess), with no edit to seqba."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from runs import ROOT
from seqba import config as config_lib
from seqba import eval as eval_cli
from seqba.errors import ConfigError
from seqba.tasks import TASKS

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

RECIPE = """task: tests.toy_task
seed: 1
output_dir: {out}
data: {{num_train: 48, num_test: 24, batch_size: 8}}
model: {{dim: 8, dropout: 0.3}}
optim: {{optimizer: sgd, lr: 0.5, lr_scheduler: constant}}
ba: {{repeats: 2}}
train: {{max_epochs: 0, max_updates: 4, validate_interval_updates: 2, log_interval: 1, progress_bar: false}}
"""


def seqba(*args, expect=0):
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def toy_recipe(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `tests.toy_task` importable in this process too
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run"))
    return path


def test_a_family_by_module_path_is_resolved_and_checked(toy_recipe):
    spec = TASKS["tests.toy_task"]
    assert "tests.toy_task" in TASKS and list(TASKS) == ["translation", "language_modeling", "image_classification"]
    cfg = config_lib.load(toy_recipe)
    assert cfg.task == "tests.toy_task" and type(cfg.data) is spec.data_config and cfg.data.batch_size == 8
    assert "tests.no_such_module" not in TASKS and "translaton" not in TASKS  # not a module: an unknown task
    with pytest.raises(ConfigError, match="module seqba.errors has no SPEC"):
        TASKS["seqba.errors"]
    parser = eval_cli.build_parser([*TASKS, "tests.toy_task"])
    assert parser.owners["max_examples"] == ["tests.toy_task"] and "max_examples" not in eval_cli.build_parser().owners


def test_train_eval_analyze_and_compare_through_the_commands(toy_recipe, tmp_path):
    run = tmp_path / "run"
    seqba("seqba.train", toy_recipe)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "seqs_per_step" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["seqs_per_step"] == 2 * r["distinct_seqs_per_step"] == 16 for r in train)  # M·B rows, B distinct
    assert any("valid_accuracy" in r for r in records)

    out = tmp_path / "eval.json"
    seqba("seqba.eval", "--checkpoint", run, "--device", "cpu", "--max-examples", 10, "--metrics-out", out)
    result = json.loads(out.read_text())
    assert result["task"] == "tests.toy_task" and result["sequences"] == 10 and 0 <= result["accuracy"] <= 1
    best = torch.load(run / "checkpoint_best.pt", weights_only=True)["step"]  # the update it evaluated
    assert result["update"] == best and best in [r["step"] for r in records if "valid_accuracy" in r]
    refused = seqba("seqba.eval", "--checkpoint", run, "--tta", 2, expect=2)  # another family's option
    assert refused.stderr.startswith("error: --tta (a image_classification option) does not apply to")
    assert "a tests.toy_task checkpoint" in refused.stderr
    bad = seqba("seqba.eval", "--checkpoint", run, "--max-examples", -1, expect=2)  # its own, checked too
    assert bad.stderr.startswith("error: argument --max-examples: must be >= 0")

    grads = tmp_path / "grad.json"
    seqba("seqba.analyze", "grad-correlation", "--checkpoint", run, "--samples", 3, "--copies", 2, "--device", "cpu",
          "--split", "test", "--out", grads)
    relations = json.loads(grads.read_text())["relations"]
    assert relations["copies"]["count"] == 3 and relations["copies"]["median"] < 0.9999  # dropout: copies differ
    assert relations["different"]["count"] == 2

    study = tmp_path / "study"
    seqba("seqba.compare", toy_recipe, "--arms", "fixed_samples,ba", "--seeds", 1, "--out", study,
          "--eval-args", "--max-examples 20", "train.max_updates=2", "train.log_interval=1")
    rows = list(csv.DictReader((study / "results.csv").open()))
    assert [(r["arm"], r["distinct_seqs_seen"], r["seqs_computed"]) for r in rows] == [
        ("fixed_samples", "32", "32"), ("ba", "16", "32")]  # M·B distinct rows; B distinct in M copies
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    table = (study / "table.md").read_text()
    assert "test accuracy (%)" in table and "No significance test: the tests.toy_task task defines none" in table

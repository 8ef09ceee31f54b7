"""Do two revisions of seqba train every recipe identically? A check for refactors that must not change results.

For every recipe under ``recipes/`` (recursively), a short run with the tiny overrides of ``tests/test_recipes.py``
is trained twice in one invocation: by this checkout's ``seqba/`` and by the ``seqba/`` package of git revision
``--rev`` (exported with ``git archive`` to a temporary folder and put first on ``PYTHONPATH``; recipes, prepared
corpora and the shared data are this checkout's). It compares, bit for bit, every training and validation record
of ``metrics.jsonl`` (wall-clock rates excepted) and every tensor of ``checkpoint_last.pt``, and prints one line
per recipe; the exit status is 1 when any recipe differs or fails.

    python tests/same_losses.py --rev HEAD~3                 # every recipe
    python tests/same_losses.py --rev 55a49b2 --only mnist   # recipes whose file name contains "mnist"
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_recipes import RECIPES, SHARED, SYNTHETIC, tiny  # noqa: E402

from seqba import config as config_lib  # noqa: E402
from seqba.data.paths import data_root  # noqa: E402

RATES = ("_per_s", "seconds", "model_flops_per_step")  # timings, and a count some revisions do not log


def export_revision(rev: str, into: Path) -> Path:
    """``seqba/`` and ``recipes/`` of git revision ``rev`` unpacked under ``into``; returns ``into``. Each revision
    runs its own recipe file (a key renamed since ``rev`` is then read by the code that knows it)."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "seqba", "recipes"], cwd=ROOT,
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def overrides_for(recipe: Path, work: Path) -> list[str] | None:
    """The tiny overrides of ``tests/test_recipes.py`` for ``recipe`` (None: its data is not here)."""
    cfg = config_lib.load(recipe)
    out = tiny(recipe, cfg.task)
    if cfg.task == "translation":
        out.append(f"data.prepared_dir={work / ('data-' + recipe.stem)}")
        preset = cfg.data.prepare.preset
        if preset in SHARED:
            if data_root() is None:
                return None
            out += ["data.prepare.vocab_size=300", "data.prepare.max_train_lines=400"]
        else:
            out += SYNTHETIC if preset != "synthetic" else SYNTHETIC[1:]
    elif cfg.task == "image_classification" and cfg.data.dataset == "cifar10":  # fake CIFAR-10 batches
        from test_image_task import write_fake_cifar10

        out.append(f"data.root={write_fake_cifar10(work / 'cifar')}")
    elif data_root() is None:
        return None
    return out


def train(code: Path, recipe: Path, overrides: list[str], out: Path) -> tuple[list[dict], dict]:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    if data_root() is not None:  # the old revision runs from a temporary folder: name the shared data explicitly
        env.setdefault("SEQBA_DATA", str(data_root()))
    proc = subprocess.run([sys.executable, "-m", "seqba.train", str(recipe), *overrides, f"output_dir={out}"],
                          cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    records = [{k: v for k, v in json.loads(line).items() if not k.endswith(RATES)}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    weights = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    return records, weights


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", required=True, help="the git revision to compare with (e.g. HEAD~1, a commit)")
    p.add_argument("--only", default="", help="only recipes whose file name contains this text")
    args = p.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="seqba-same-") as tmp:
        tmp = Path(tmp)
        (tmp / "old").mkdir()
        old = export_revision(args.rev, tmp / "old")
        for recipe in RECIPES:
            if args.only not in recipe.name:
                continue
            name = recipe.relative_to(ROOT)
            overrides = overrides_for(recipe, tmp)
            if overrides is None:
                print(f"skip  {name}: its corpus is not here (set SEQBA_DATA)")
                continue
            try:
                new_records, new_weights = train(ROOT, recipe, overrides, tmp / f"new-{recipe.stem}")
                old_recipe = old / "recipes" / recipe.name
                old_records, old_weights = train(old, old_recipe if old_recipe.is_file() else recipe, overrides,
                                                 tmp / f"old-{recipe.stem}")
            except RuntimeError as err:
                print(f"FAIL  {name}: {err}")
                failed += 1
                continue
            differing = [k for k in new_weights if k not in old_weights or not torch.equal(new_weights[k], old_weights[k])]
            same = new_records == old_records and not differing and set(new_weights) == set(old_weights)
            steps = sum("loss" in r for r in new_records)
            print(f"{'same' if same else 'DIFF'}  {name}: {len(new_records)} records ({steps} training), "
                  f"{len(new_weights)} tensors" + ("" if same else f"; {len(differing)} tensors differ"))
            failed += not same
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

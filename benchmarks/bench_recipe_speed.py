"""Benchmark: a recipe's training speed through ``python -m seqba.train``, exactly as a user runs it, under settings.

Settings (each a separate process; rounds interleaved so that other jobs on shared cores disturb them alike):

* ``fp32_default_malloc``: fp32, eager, glibc's allocator defaults (``SEQBA_MALLOC=default``): the reference;
* ``fp32``: fp32, eager, the CLI's default ``configure_malloc()``;
* ``bf16``: ``train.mixed_precision=bf16`` (autocast), eager, ``configure_malloc()``;
* ``fp32_compiled`` / ``bf16_compiled`` (``--compile``): plus ``train.compile=true`` (inductor; its compile time falls
  in the warm-up updates and is excluded);
* ``ref_fp32_default_malloc`` / ``ref_bf16`` (``--reference-rev REV``): the same two settings run by seqba as it was
  at git revision REV (its ``seqba/`` package exported to a temporary folder and put first on ``PYTHONPATH``; the
  recipe and prepared data are this checkout's), so a speed-up of the code itself is measured against the old
  code in the same run, not against a figure from another day.

Reads ``tokens_per_s`` (target tokens of the M·B rows per second; ``words_per_s`` / ``images_per_s`` for the other
tasks) of every logged window of ``--log-interval`` updates after the first ``--warmup`` updates, takes their median
(a window hit by a recompile or by another job on a shared core does not move it), and reports the medians over
rounds and, per round, the ratio to the reference with the median and range of those ratios (never the best
round). Writes ``benchmarks/results/recipe_speed.json``.

    python benchmarks/bench_recipe_speed.py recipes/transformer_multi30k_m4.yaml --updates 50 --warmup 25 --rounds 2 --compile
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ratios import fmt, per_round_ratios, summarize  # benchmarks/ratios.py

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "fp32_default_malloc": ({"SEQBA_MALLOC": "default"}, []),
    "fp32": ({}, []),
    "bf16": ({}, ["train.mixed_precision=bf16"]),
    "fp32_compiled": ({}, ["train.compile=true"]),
    "bf16_compiled": ({}, ["train.mixed_precision=bf16", "train.compile=true"]),
}


REFERENCE_SETTINGS = ("fp32_default_malloc", "bf16")


def export_revision(rev: str, into: str) -> str:
    """``git archive REV seqba`` unpacked under ``into``, with ``data-bin`` linked to this checkout's (prepared data
    is shared); returns the folder to run from (``python -m`` puts the working directory first on ``sys.path``)."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "seqba"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    (ROOT / "data-bin").mkdir(exist_ok=True)
    (Path(into) / "data-bin").symlink_to(ROOT / "data-bin")
    return into


def run(recipe: str, setting: str, args, extra: list[str]) -> float:
    code = ROOT
    if setting.startswith("ref_"):
        setting, code = setting[len("ref_"):], args.reference_path
    env_extra, overrides = SETTINGS[setting]
    env = {**os.environ, "PYTHONPATH": str(code), **env_extra}
    if (ROOT.parent / "shared" / "data").is_dir():  # ../shared/data as seen from this checkout, for any working dir
        env.setdefault("SEQBA_DATA", str(ROOT.parent / "shared" / "data"))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="seqba-speed-") as out:
        cmd = [sys.executable, "-m", "seqba.train", str(Path(recipe).resolve()), *extra, *overrides, f"output_dir={out}",
               f"train.max_updates={args.updates}", f"train.log_interval={args.log_interval}",
               "train.validate_interval_updates=0", "train.save_interval_updates=0", "train.progress_bar=false"]
        proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{setting} failed:\n{proc.stderr[-2000:]}")
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r.get("step", 0) > args.warmup and "loss" in r]
    rate = next(k for k in ("tokens_per_s", "words_per_s", "images_per_s") if k in windows[0])
    return statistics.median(r[rate] for r in windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--log-interval", type=int, default=5, help="updates per timed window")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time train.compile (fp32 and bf16)")
    p.add_argument("--settings", default=None,
                   help="comma-separated subset of the settings to time (fp32_default_malloc is always timed)")
    p.add_argument("--reference-rev", default=None,
                   help="also time fp32 (glibc defaults) and bf16 with seqba's code at this git revision")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recipe_speed.json"))
    args = p.parse_args()
    if not 0 < args.warmup < args.updates or args.warmup % args.log_interval or args.updates % args.log_interval:
        p.error("--warmup < --updates, both multiples of --log-interval, e.g. --updates 40 --warmup 20")
    settings = [s for s in SETTINGS if args.compile or not s.endswith("_compiled")]
    if args.reference_rev:
        args.reference_path = export_revision(args.reference_rev, tempfile.mkdtemp(prefix="seqba-ref-"))
        settings = [f"ref_{s}" for s in REFERENCE_SETTINGS] + settings
    if args.settings:
        wanted = {"fp32_default_malloc", *args.settings.split(",")}
        unknown = wanted - set(settings)
        if unknown:
            p.error(f"--settings: unknown {', '.join(sorted(unknown))}; valid: {', '.join(settings)}")
        settings = [s for s in settings if s in wanted]
    rates: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for setting in settings:
            rates[setting].append(run(args.recipe, setting, args, args.overrides))
            print(f"round {r + 1} {setting:22s} {rates[setting][-1]:9.0f} /s", flush=True)
    old = statistics.median(rates["ref_fp32_default_malloc"]) if "ref_fp32_default_malloc" in rates else None
    result = {"recipe": args.recipe, "overrides": args.overrides, "updates": args.updates, "warmup": args.warmup,
              "reference_rev": args.reference_rev,
              "code_rev": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip(),
              "log_interval": args.log_interval,
              "threads": args.threads, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
              "python": platform.python_version(), "torch": __import__("torch").__version__,
              "note": "interleaved rounds on shared CPU cores; compare ratios, not absolute rates",
              # ratios: per round (both settings timed in the same round), then their median and range
              "settings": {s: {"per_round": [round(v, 1) for v in rates[s]], "median": round(statistics.median(rates[s]), 1),
                               "ratio_to_fp32_default_malloc": summarize(per_round_ratios(
                                   rates[s], rates["fp32_default_malloc"]), 3),
                               **({"ratio_to_ref_fp32_default_malloc": summarize(per_round_ratios(
                                   rates[s], rates["ref_fp32_default_malloc"]), 3)} if old else {})}
                           for s in settings}}
    for s in settings:
        row = result["settings"][s]
        print(f"{s:26s} median {row['median']:9.0f} /s   {fmt(row['ratio_to_fp32_default_malloc'])}x of fp32 with "
              f"glibc's defaults" + (f", {fmt(row['ratio_to_ref_fp32_default_malloc'])}x of {args.reference_rev}'s"
                                     if "ratio_to_ref_fp32_default_malloc" in row else "") + " (median (range) of rounds)")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

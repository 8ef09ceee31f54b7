"""Benchmark: a recipe's training speed through ``python -m seqba.train``, exactly as a user runs it, under settings.

Settings (each a separate process; rounds interleaved so that other jobs on shared cores disturb them alike):

* ``fp32_default_malloc``: fp32 (``train.mixed_precision=no``, whatever the recipe's default), eager, glibc's
  allocator defaults (``SEQBA_MALLOC=default``): the reference;
* ``fp32``: fp32, eager, the CLI's default ``configure_malloc()``;
* ``bf16``: ``train.mixed_precision=bf16`` (autocast), eager, ``configure_malloc()``;
* ``auto``: ``train.mixed_precision=auto`` (``seqba.precision``) with a cache of its own, empty at the start: the
  first round's run probes fp32 against bf16 before it trains (outside its timed windows), later rounds read the
  choice; the choice and the probe's figures are stored in the output (``auto_choice``);
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
round), with each run's peak RSS. Writes ``benchmarks/results/recipe_speed.json``.

MFU on this CPU (recipes of a Transformer with a ``data.prepare.vocab_size``): the median over the same windows of
the logged ``model_flops_per_s`` (``seqba.flops``: 6 x parameters x tokens plus attention, as nanoGPT and PaLM's
appendix B count them) over the peak GEMM FLOP/s of the step's shapes measured by ``benchmarks/mfu.py`` before and
after the runs (float32 and bfloat16, one thread and all threads; the run's precision and thread count are used).

    python benchmarks/bench_recipe_speed.py recipes/transformer_multi30k_m4.yaml --updates 50 --warmup 25 \
        --rounds 2 --compile
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

import mfu as mfu_lib  # benchmarks/mfu.py
from ratios import fmt, per_round_ratios, summarize  # benchmarks/ratios.py

from seqba import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "fp32_default_malloc": ({"SEQBA_MALLOC": "default"}, ["train.mixed_precision=no"]),
    "fp32": ({}, ["train.mixed_precision=no"]),
    "bf16": ({}, ["train.mixed_precision=bf16"]),
    "auto": ({}, ["train.mixed_precision=auto"]),
    "fp32_compiled": ({}, ["train.mixed_precision=no", "train.compile=true"]),
    "bf16_compiled": ({}, ["train.mixed_precision=bf16", "train.compile=true"]),
    # the consistency term's cost against BA alone (issue 21: <= 1.15x); alpha as the Multi30k symkl recipe
    "bf16_symkl": ({}, ["train.mixed_precision=bf16", "ba.consistency=sym_kl", "ba.consistency_alpha=3"]),
    "bf16_symkl_compiled": ({}, ["train.mixed_precision=bf16", "ba.consistency=sym_kl", "ba.consistency_alpha=3",
                                 "train.compile=true"]),
}


REFERENCE_SETTINGS = ("fp32_default_malloc", "bf16")


def export_revision(rev: str, into: str) -> str:
    """``git archive REV seqba`` unpacked under ``into``, with ``data-bin`` linked to this checkout's (prepared data
    is shared); returns the folder to run from (``python -m`` puts the working directory first on ``sys.path``)."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "seqba"], cwd=ROOT, capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    (ROOT / "data-bin").mkdir(exist_ok=True)
    (Path(into) / "data-bin").symlink_to(ROOT / "data-bin")
    return into


def recipe_run(recipe: str, overrides: list[str], *, updates: int, log_interval: int, threads: int | None = None,
               code: Path = ROOT, env_extra: dict | None = None) -> tuple[list[dict], float]:
    """``python -m seqba.train RECIPE OVERRIDES`` for ``updates`` updates in a subprocess run from ``code`` (no
    validation, no checkpoints); returns its metrics.jsonl records and the child's peak RSS in MB.

    Raises:
        RuntimeError: the run failed (with the end of its stderr).
    """
    env = {**os.environ, "PYTHONPATH": str(code), **(env_extra or {})}
    if (ROOT.parent / "shared" / "data").is_dir():  # ../shared/data as seen from this checkout, for any working dir
        env.setdefault("SEQBA_DATA", str(ROOT.parent / "shared" / "data"))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="seqba-speed-") as out, tempfile.TemporaryFile("w+") as err:
        cmd = [sys.executable, "-m", "seqba.train", str(Path(recipe).resolve()), *overrides, f"output_dir={out}",
               f"train.max_updates={updates}", f"train.log_interval={log_interval}",
               "train.validate_interval_updates=0", "train.save_interval_updates=0", "train.progress_bar=false"]
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS, not the largest child's
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(overrides)} failed:\n{err.read()[-2000:]}")
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return records, usage.ru_maxrss / 1024


def window_medians(records: list[dict], warmup: int) -> dict:
    """Medians over the logged windows after ``warmup`` updates: ``rate`` (``tokens_per_s``, or ``words_per_s`` /
    ``images_per_s`` for the other tasks), and ``model_flops_per_s`` where the task logs it (else None)."""
    windows = [r for r in records if r.get("step", 0) > warmup and "loss" in r]
    if not windows:
        raise RuntimeError(f"no logged window after update {warmup}")
    rate = next(k for k in ("tokens_per_s", "words_per_s", "images_per_s") if k in windows[0])
    flops = [r["model_flops_per_s"] for r in windows if "model_flops_per_s" in r]
    return {"rate": statistics.median(r[rate] for r in windows), "rate_key": rate,
            "model_flops_per_s": statistics.median(flops) if flops else None}


def recipe_peaks(recipe: str, overrides: list[str]) -> dict:
    """Measured GEMM peaks (benchmarks/mfu.py) for the recipe's step shapes (M·B tokens of its budget, d_model,
    ffn_dim, vocabulary); {} for a model without those sizes (no MFU)."""
    cfg = config_lib.load(recipe, overrides)
    model, prepare = cfg.model, getattr(cfg.data, "prepare", None)
    vocab = getattr(prepare, "vocab_size", None)
    if not all(hasattr(model, k) for k in ("d_model", "ffn_dim")) or not vocab or not hasattr(cfg.data, "max_tokens"):
        return {}
    return mfu_lib.measure_peaks(mfu_lib.step_shapes(cfg.data.max_tokens * cfg.ba.repeats, model.d_model,
                                                     model.ffn_dim, vocab))


def run(recipe: str, setting: str, args, extra: list[str]) -> dict:
    """One timed run of ``setting``: window medians (:func:`window_medians`) and ``peak_rss_mb``."""
    code = ROOT
    if setting.startswith("ref_"):
        setting, code = setting[len("ref_"):], args.reference_path
    env_extra, overrides = SETTINGS[setting]
    records, rss = recipe_run(recipe, [*extra, *overrides], updates=args.updates, log_interval=args.log_interval,
                              threads=args.threads, code=code, env_extra=env_extra)
    return {**window_medians(records, args.warmup), "peak_rss_mb": rss}


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
    if "auto" in settings:  # a cache of this benchmark's own: the first auto run probes, later rounds reuse it
        os.environ["SEQBA_PRECISION_CACHE"] = str(Path(tempfile.mkdtemp(prefix="seqba-precision-")) / "cache.json")
    peaks_before = recipe_peaks(args.recipe, args.overrides)
    runs: dict[str, list[dict]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for setting in settings:
            runs[setting].append(run(args.recipe, setting, args, args.overrides))
            print(f"round {r + 1} {setting:22s} {runs[setting][-1]['rate']:9.0f} /s", flush=True)
    peaks = mfu_lib.best_peaks(peaks_before, recipe_peaks(args.recipe, args.overrides)) if peaks_before else {}
    rates = {s: [row["rate"] for row in runs[s]] for s in settings}
    old = "ref_fp32_default_malloc" in rates
    auto_choice = None
    if "auto" in settings:
        auto_choice = list(json.loads(Path(os.environ["SEQBA_PRECISION_CACHE"]).read_text()).values())
    result = {"recipe": args.recipe, "overrides": args.overrides, "updates": args.updates, "warmup": args.warmup,
              "reference_rev": args.reference_rev,
              "code_rev": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip(),
              "log_interval": args.log_interval, "rate": runs[settings[0]][0]["rate_key"],
              "threads": args.threads, "machine": machine(),
              "python": platform.python_version(), "torch": __import__("torch").__version__,
              "note": "interleaved rounds on shared CPU cores; compare ratios, not absolute rates",
              "mfu_note": mfu_lib.FLOPS_NOTE, "peaks": peaks, "auto_choice": auto_choice,
              # ratios: per round (both settings timed in the same round), then their median and range
              "settings": {s: {"per_round": [round(v, 1) for v in rates[s]],
                               "median": round(statistics.median(rates[s]), 1),
                               "peak_rss_mb": [round(row["peak_rss_mb"]) for row in runs[s]],
                               "ratio_to_fp32_default_malloc": summarize(per_round_ratios(
                                   rates[s], rates["fp32_default_malloc"]), 3),
                               **({"ratio_to_ref_fp32_default_malloc": summarize(per_round_ratios(
                                   rates[s], rates["ref_fp32_default_malloc"]), 3)} if old else {}),
                               **setting_mfu(runs[s], peaks, precision(s, auto_choice), args.threads)}
                           for s in settings}}
    for s in settings:
        row = result["settings"][s]
        reference = (f", {fmt(row['ratio_to_ref_fp32_default_malloc'])}x of {args.reference_rev}'s"
                     if "ratio_to_ref_fp32_default_malloc" in row else "")
        print(f"{s:26s} median {row['median']:9.0f} /s   {fmt(row['ratio_to_fp32_default_malloc'])}x of fp32 with "
              f"glibc's defaults{reference} (median (range) of rounds), peak RSS "
              f"{statistics.median(row['peak_rss_mb']):.0f} MB")
        if row.get("mfu"):
            print(f"{'':26s} {mfu_lib.fmt_mfu(row['mfu'])}")
    if peaks:
        print(mfu_lib.describe(peaks) + "\n  " + mfu_lib.FLOPS_NOTE)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def precision(setting: str, auto_choice: list[dict] | None = None) -> str:
    """train.mixed_precision of a setting (``ref_`` settings: the same as the setting; ``auto``: what it chose)."""
    if setting == "auto":
        return auto_choice[0]["choice"] if auto_choice else "no"
    return "bf16" if "train.mixed_precision=bf16" in SETTINGS[setting.removeprefix("ref_")][1] else "no"


def setting_mfu(runs: list[dict], peaks: dict, precision_: str, threads: int | None) -> dict:
    """``{"model_flops_per_s": per round, "mfu": mfu_row of their median}``, or {} when the task logs no FLOPs or no peak
    was measured."""
    flops = [row["model_flops_per_s"] for row in runs if row["model_flops_per_s"] is not None]
    if not flops or not peaks:
        return {}
    return {"model_flops_per_s": [round(f) for f in flops],  # per round, as benchmarks/ratios.py's mfu() reads them
            "mfu": mfu_lib.mfu_row(statistics.median(flops), peaks, precision_, threads)}


def machine() -> str:
    """``x86_64 2 cpus (AMD EPYC; bf16: avx512_bf16)``: lscpu's model name and the CPU's bf16 flags."""
    name, flags = "", ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            name = value.strip() if key.strip() == "Model name" else name
            flags = value if key.strip() == "Flags" else flags
    except OSError:
        pass
    bf16 = [f for f in flags.split() if "bf16" in f or f.startswith("amx")]
    return f"{platform.machine()} {os.cpu_count()} cpus ({name or 'cpu'}; bf16: {', '.join(bf16) or 'none'})"

if __name__ == "__main__":
    sys.exit(main())

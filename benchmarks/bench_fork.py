"""Benchmark: forked BA (``ba.fork_layer``) against BA, through ``python -m seqba.train`` exactly as a user runs it.

Settings (each a separate process; rounds interleaved so that other jobs on shared cores disturb them alike), on the
recipe as given (Multi30k M=4: 3 + 3 layers, d_model 256, 8k vocabulary):

* ``ba``: ``ba.fork_layer=0``, BA's copies made at the input (every layer runs M times per sample);
* ``ba_fork_enc``: ``ba.fork_layer=<encoder_layers>``, the encoder runs once per sample, copies made above it;
* ``ba_fork_top``: ``ba.fork_layer=<all layers but the last decoder layer>``, copies made below the last layer;

each in every ``--precisions`` (``bf16``: the recipe's default; ``no``: float32). Reads ``tokens_per_s`` (target
tokens of the M·B rows per second) and ``model_flops_per_s`` of every logged window after ``--warmup`` updates and
takes their medians, with the peak RSS of each run; reports per round the ratio fork / BA of tokens/s, with the
median and range over rounds (``benchmarks/ratios.py``), beside the ratio of model FLOPs per step that
``seqba.flops.transformer_step_flops`` predicts for the fork (mean lengths of the recipe's training data), and the MFU
on this CPU of every setting (``benchmarks/mfu.py``). Writes ``benchmarks/results/fork.json``.

    python benchmarks/bench_fork.py recipes/transformer_multi30k_m4.yaml --updates 40 --warmup 20 --rounds 3 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

import mfu as mfu_lib  # benchmarks/mfu.py
from bench_recipe_speed import ROOT, machine, recipe_peaks, recipe_run, window_medians
from ratios import fmt, per_round_ratios, summarize  # benchmarks/ratios.py

from seqba import config as config_lib
from seqba.flops import transformer_step_flops


def fork_layers(cfg) -> dict[str, int]:
    """``{"ba": 0, "ba_fork_enc": encoder_layers, "ba_fork_top": encoder_layers + decoder_layers - 1}``."""
    enc, dec = cfg.model.encoder_layers, cfg.model.decoder_layers
    return {"ba": 0, "ba_fork_enc": enc, "ba_fork_top": enc + dec - 1}


def predicted_flop_ratios(cfg, layers: dict[str, int], sentences: int = 20000) -> dict[str, float]:
    """Model FLOPs per step of each setting over BA's, from ``seqba.flops`` on the first ``sentences`` pairs of the
    recipe's prepared training split (lengths with eos, as the task counts them)."""
    from seqba.data.translation import TranslationDataset

    data = TranslationDataset(str(ROOT / cfg.data.prepared_dir), "train")
    pairs = [data[i] for i in range(min(sentences, len(data)))]
    src = np.array([len(p["source"]) for p in pairs])
    tgt = np.array([len(p["target"]) for p in pairs])
    m = cfg.model
    flops = {name: transformer_step_flops(src, tgt, d_model=m.d_model, ffn_dim=m.ffn_dim,
                                          encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers,
                                          vocab_size=cfg.data.prepare.vocab_size, repeats=cfg.ba.repeats, fork_layer=k)
             for name, k in layers.items()}
    return {name: value / flops["ba"] for name, value in flops.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--updates", type=int, default=40)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--log-interval", type=int, default=5, help="updates per timed window")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: torch's)")
    p.add_argument("--precisions", default="bf16", help="comma-separated train.mixed_precision values (bf16, no)")
    p.add_argument("--note", default="", help="machine conditions to record (other jobs on the cores, ...)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fork.json"))
    args = p.parse_args()
    if not 0 < args.warmup < args.updates or args.warmup % args.log_interval or args.updates % args.log_interval:
        p.error("--warmup < --updates, both multiples of --log-interval, e.g. --updates 40 --warmup 20")
    precisions = args.precisions.split(",")
    if set(precisions) - set(mfu_lib.DTYPES):
        p.error(f"--precisions: one of {', '.join(mfu_lib.DTYPES)}, comma-separated")
    cfg = config_lib.load(args.recipe, args.overrides)
    layers = fork_layers(cfg)
    settings = [(name, precision) for precision in precisions for name in layers]
    peaks_before = recipe_peaks(args.recipe, args.overrides)
    runs: dict[str, list[dict]] = {f"{name}_{precision}": [] for name, precision in settings}
    for r in range(args.rounds):
        for name, precision in settings:
            records, rss = recipe_run(args.recipe, [*args.overrides, f"ba.fork_layer={layers[name]}",
                                                    f"train.mixed_precision={precision}"],
                                      updates=args.updates, log_interval=args.log_interval, threads=args.threads)
            row = {**window_medians(records, args.warmup), "peak_rss_mb": rss}
            runs[f"{name}_{precision}"].append(row)
            print(f"round {r + 1} {name:12s} {mfu_lib.NAMES[precision]}  {row['rate']:7.0f} tgt tokens/s  "
                  f"{row['model_flops_per_s'] / 1e9:6.1f} model GFLOP/s  peak RSS {rss:5.0f} MB", flush=True)
    peaks = mfu_lib.best_peaks(peaks_before, recipe_peaks(args.recipe, args.overrides))
    flop_ratio = predicted_flop_ratios(cfg, layers)
    table = {}
    for name, precision in settings:
        key, base = f"{name}_{precision}", f"ba_{precision}"
        rate = [row["rate"] for row in runs[key]]
        table[key] = {
            "fork_layer": layers[name], "precision": precision,
            "tgt_tokens_per_s": [round(v, 1) for v in rate], "median": round(statistics.median(rate), 1),
            "peak_rss_mb": [round(row["peak_rss_mb"]) for row in runs[key]],
            "model_flops_per_s": [round(row["model_flops_per_s"]) for row in runs[key]],
            "speed_over_ba": summarize(per_round_ratios(rate, [row["rate"] for row in runs[base]]), 3),
            "rss_over_ba": summarize(per_round_ratios([row["peak_rss_mb"] for row in runs[key]],
                                                      [row["peak_rss_mb"] for row in runs[base]]), 3),
            "predicted_flops_over_ba": round(flop_ratio[name], 4),
            "mfu": mfu_lib.mfu_row(statistics.median(row["model_flops_per_s"] for row in runs[key]), peaks,
                                   precision, args.threads)}
    print(f"{'setting':<20} {'k':>2} {'tgt tok/s':>9} {'x BA (median (range))':>22} {'FLOPs x BA':>10} "
          f"{'1/FLOPs':>7} {'RSS MB':>7} {'MFU':>6}")
    for key, row in table.items():
        print(f"{key:<20} {row['fork_layer']:>2} {row['median']:>9.0f} {fmt(row['speed_over_ba']):>22} "
              f"{row['predicted_flops_over_ba']:>10.3f} {1 / row['predicted_flops_over_ba']:>7.2f} "
              f"{statistics.median(row['peak_rss_mb']):>7.0f} {100 * (row['mfu']['mfu'] or 0):>5.1f}%")
    print(mfu_lib.describe(peaks) + "\n  " + mfu_lib.FLOPS_NOTE)
    result = {"recipe": args.recipe, "overrides": args.overrides, "updates": args.updates, "warmup": args.warmup,
              "log_interval": args.log_interval, "rounds": args.rounds, "threads": args.threads,
              "code_rev": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip(),
              "machine": machine(), "torch": __import__("torch").__version__,
              "note": "interleaved rounds on shared CPU cores; compare ratios, not absolute rates. " + args.note,
              "goals": {"ba_fork_enc": 1.15, "ba_fork_top": 1.8},
              "mfu_note": mfu_lib.FLOPS_NOTE, "peaks": peaks, "settings": table}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())

"""Does bf16 hold the loss? fp32 and bf16 training of one recipe side by side, validation loss compared.

Runs ``python -m seqba.train RECIPE [overrides]`` twice with the same seed, once as given (fp32) and once with
``train.mixed_precision=bf16``, as two processes at the same time (``--threads`` each), then reads both runs'
validation losses from ``metrics.jsonl`` and reports them per validation, the largest absolute difference, and
the median training throughput of each (same run, same moment: the ratio carries across machines, the rates do
not). Writes JSON (default ``benchmarks/results/bf16_valid_loss.json``).

    python benchmarks/bf16_valid_loss.py recipes/transformer_multi30k_m4.yaml ba.repeats=1 model.d_model=128 \\
        model.ffn_dim=512 model.encoder_layers=2 model.decoder_layers=2 data.prepared_dir=data-bin/multi30k_8k \\
        data.prepare.max_train_lines=8000 data.prepare.vocab_size=4000 train.max_updates=1000 \\
        train.validate_interval_updates=125
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_valid_loss.json"))
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    base = [sys.executable, "-m", "seqba.train", args.recipe, *args.overrides, "train.progress_bar=false",
            "train.save_interval_updates=0"]
    # both runs start at once; data preparation, if needed, is shared under its build lock
    with tempfile.TemporaryDirectory(prefix="seqba-bf16-") as tmp:
        runs = {name: Path(tmp) / name for name in ("fp32", "bf16")}
        procs = {name: subprocess.Popen([*base, f"output_dir={out}", f"train.mixed_precision={'bf16' if name == 'bf16' else 'no'}"],
                                        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for name, out in runs.items()}
        for name, proc in procs.items():
            _, err = proc.communicate()
            if proc.returncode:
                sys.exit(f"error: the {name} run failed:\n{err[-2000:]}")
        records = {name: [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                   for name, out in runs.items()}
    valid = {name: {r["step"]: r["valid_loss"] for r in recs if "valid_loss" in r} for name, recs in records.items()}
    steps = sorted(set(valid["fp32"]) & set(valid["bf16"]))
    rate_key = next(k for k in ("tokens_per_s", "words_per_s", "images_per_s") if any(k in r for r in records["fp32"]))
    rates = {name: statistics.median(r[rate_key] for r in recs if rate_key in r) for name, recs in records.items()}
    diff = max(abs(valid["fp32"][s] - valid["bf16"][s]) for s in steps)
    result = {
        "command": " ".join(["python -m seqba.train", args.recipe, *args.overrides, "[train.mixed_precision=bf16]"]),
        "threads_each": args.threads, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": __import__("torch").__version__,
        "code_rev": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.strip(),
        "valid_loss": {"steps": steps, "fp32": [valid["fp32"][s] for s in steps], "bf16": [valid["bf16"][s] for s in steps]},
        "max_abs_valid_loss_difference": diff,
        f"{rate_key}_median": rates, "bf16_over_fp32": rates["bf16"] / rates["fp32"],
    }
    for s in steps:
        print(f"update {s:6d}  valid loss fp32 {valid['fp32'][s]:.4f}  bf16 {valid['bf16'][s]:.4f}")
    print(f"max |difference| {diff:.4f}; {rate_key} bf16 / fp32 = {result['bf16_over_fp32']:.2f} (side by side)")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

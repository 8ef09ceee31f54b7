"""Benchmark: the extra cost of the training-time gradient statistics (``train.grad_stats_interval``).

Trains the same recipe twice in this process, ``--updates`` updates each, with the statistics off and on every
update (interval 1, the worst case), and reports per case:

* ``update_s``: median wall time between the ends of consecutive updates (the step plus every callback, so the
  statistics' extra forward and M backward passes are included when they are on); the first 2 updates are dropped;
* ``stats_s``: median ``grad_stats_seconds`` (the extra passes alone, as logged in metrics.jsonl);
* ``overhead_at_interval_1`` = stats_s / update_s(off), and the projected overhead at intervals 10 and 100
  (stats_s / interval / update_s(off)).

The loss trajectories of the two runs are also compared (they must be identical). Defaults: the real-MNIST ResNet-8
recipe at M=4 (256 rows per update) and the synthetic-corpus Transformer at M=4 (no download)::

    PYTHONPATH=. python benchmarks/bench_gradstats.py [--updates 20] [--out benchmarks/results/gradstats.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from seqba import train as train_cli
from seqba.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "resnet_mnist_m4": ["recipes/resnet_mnist_m4.yaml"],
    "transformer_synthetic_m4": ["recipes/transformer_synthetic_m4.yaml", "data.prepare.synthetic_train=5000"],
}


class Clock(Callback):
    """Records ``time.perf_counter()`` at every update's end (before the statistics of that update run)."""

    def __init__(self) -> None:
        self.ticks: list[float] = []

    def on_update_end(self, trainer, logs) -> None:
        self.ticks.append(time.perf_counter())


def run(args: list[str], out: Path, interval: int, updates: int) -> dict:
    clock = Clock()
    common = [f"train.max_updates={updates}", "train.max_epochs=0", "train.log_interval=1", "train.progress_bar=false",
              "train.validate_interval_updates=0", "train.save_interval_updates=0", "train.resume=none"]
    assert train_cli.main([*args, *common, f"train.grad_stats_interval={interval}", f"output_dir={out}"],
                          callbacks=[clock]) == 0
    periods = [b - a for a, b in zip(clock.ticks[2:], clock.ticks[3:])]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stats = [r["grad_stats_seconds"] for r in records if "grad_stats_seconds" in r]
    return {"update_s": statistics.median(periods), "stats_s": statistics.median(stats) if stats else None,
            "losses": [r["loss"] for r in records if "loss" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--data-bin", default=None, help="prepared_dir of the synthetic corpus (default: a temp dir)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gradstats.json"))
    a = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.cases:
            args = [str(ROOT / CASES[name][0]), *CASES[name][1:]]
            if name.startswith("transformer"):
                args.append(f"data.prepared_dir={a.data_bin or Path(tmp) / 'synthetic'}")
            off = run(args, Path(tmp) / f"{name}_off", 0, a.updates)
            on = run(args, Path(tmp) / f"{name}_on", 1, a.updates)
            ratio = on["stats_s"] / off["update_s"]
            results[name] = {"update_s_off": round(off["update_s"], 4), "update_s_on": round(on["update_s"], 4),
                             "stats_s": round(on["stats_s"], 4), "overhead_at_interval_1": round(ratio, 3),
                             "overhead_at_interval_10": round(ratio / 10, 4),
                             "overhead_at_interval_100": round(ratio / 100, 5),
                             "same_losses": on["losses"] == off["losses"]}
            print(name, json.dumps(results[name]), flush=True)
    machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    Path(a.out).write_text(json.dumps({"updates": a.updates, "machine": machine, "results": results}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

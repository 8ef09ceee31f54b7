"""Profile Transformer-base training steps on a CUDA GPU: where the wall time of an update goes (CPU and CUDA).

Trains the synthetic translation recipe at Transformer-base size (32k vocabulary, 4,096 tokens; the corpus and
overrides of ``bench_train.py``) through :class:`seqba.trainer.Trainer` in bf16, profiles ``--steps`` updates after
``--warmup`` with ``torch.profiler`` (CPU and CUDA activities) and prints the seconds per update, the CUDA busy time
per update, and the top ops by self CPU time and by self CUDA time. Writes the tables to ``--out``.

    python benchmarks/profile_gpu_step.py --out /tmp/profile_gpu.txt
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench_train import recipe_args, write_random_corpus  # benchmarks/bench_train.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="profile_gpu.txt")
    p.add_argument("--small", action="store_true", help="d_model 256, 3+3 layers (a quick check on the CPU)")
    args = p.parse_args()
    from seqba import config as config_lib
    from seqba.callbacks import Callback
    from seqba.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="seqba-gpu-profile-"))
    write_random_corpus(work / "corpus", 32000, sentences=4000)
    ns = argparse.Namespace(data=work / "corpus", max_tokens=4096, steps=args.warmup + args.steps, precision="bf16",
                            compile=False, small=args.small)
    argv = recipe_args(ns, work / "run", args.repeats, 1)
    cfg = config_lib.load(argv[0], argv[1:])
    times: list[float] = []

    class Clock(Callback):
        def on_update_end(self, trainer, logs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    trainer = Trainer(cfg, callbacks=[Clock()])
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                  torch.profiler.ProfilerActivity.CUDA],
                                      schedule=torch.profiler.schedule(wait=args.warmup, warmup=0, active=args.steps))

    class Step(Callback):
        def on_update_end(self, trainer, logs):
            profiler.step()

    trainer.extra_callbacks.append(Step())
    with profiler:
        trainer.train()
    per_update = [b - a for a, b in zip(times, times[1:])][args.warmup - 1:]
    events = profiler.key_averages()
    # the ProfilerStep rows span whole steps: leave them out of the kernels' busy time
    cuda_total = sum(e.self_device_time_total for e in events if not e.key.startswith("ProfilerStep")) / 1e6 / args.steps
    lines = [f"seconds per update (after warm-up): {[round(t, 4) for t in per_update]}",
             f"CUDA busy per update (self device time, s): {cuda_total:.4f}", "",
             events.table(sort_by="self_cpu_time_total", row_limit=30), "",
             events.table(sort_by="self_device_time_total", row_limit=25)]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

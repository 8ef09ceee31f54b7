"""Profile seqba's training step with ``torch.profiler``: where the time of one update goes.

Runs the recipe's real loop (``seqba.trainer.Trainer`` with a profiling callback) for ``--steps`` updates after
``--warmup``, and groups the CPU self time of the profiled ops into the parts of a step: data loading and collate
(the loader's ``__next__``), ``repeat_batch``, the forward matmuls/attention/elementwise, the loss
(log_softmax + gather of the label-smoothed CE), backward, gradient normalisation and clipping, and the optimizer
(Adam). Prints the shares, the top ops, and writes JSON (``benchmarks/results/profile_step.json``).

    python benchmarks/profile_step.py recipes/transformer_multi30k_m4.yaml --steps 10 --threads 1
    python benchmarks/profile_step.py recipes/transformer_multi30k_m4.yaml train.mixed_precision=no --steps 10

Op names are grouped by substring (first match wins), so a group is approximate: ``exp_`` is the fused loss's
backward, ``copy_`` any dtype cast or copy (autocast's casts, float32 chunks of the bf16 logits).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "profile_step.json"))
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from seqba import config as config_lib
    from seqba.allocator import configure_malloc
    from seqba.callbacks import Callback
    from seqba.trainer import Trainer

    configure_malloc()
    torch.set_num_threads(args.threads)
    out_dir = tempfile.mkdtemp(prefix="seqba-profile-")
    total = args.warmup + args.steps
    cfg = config_lib.load(args.recipe, [*args.overrides, f"output_dir={out_dir}", f"train.max_updates={total}",
                                        "train.validate_interval_updates=0", "train.save_interval_updates=0",
                                        "train.progress_bar=false", f"train.log_interval={total}"])

    class Profile(Callback):
        def __init__(self) -> None:
            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)

        def on_update_end(self, trainer, logs) -> None:
            if trainer.state["num_updates"] == args.warmup:
                self.prof.__enter__()
            if trainer.state["num_updates"] == total:
                self.prof.__exit__(None, None, None)

    prof_cb = Profile()
    trainer = Trainer(cfg, [prof_cb])
    # label the parts of a step that are ours (the torch ops inside them are attributed by name below)
    task_cls = type(trainer)
    original_step = task_cls.train_step

    def train_step(self, batches):
        with record_function("seqba::train_step"):
            return original_step(self, batches)

    task_cls.train_step = train_step
    from seqba.ba import BatchAugmentation

    original_expand = BatchAugmentation.expand  # the trainer's BA component repeats (and augments) each batch

    def expand(self, batch):
        with record_function("seqba::expand"):
            return original_expand(self, batch)

    BatchAugmentation.expand = expand
    trainer.validate = lambda: {}  # only the updates are profiled
    trainer.save_checkpoint = lambda: None
    trainer.train()
    events = prof_cb.prof.key_averages()
    step_total = sum(e.self_cpu_time_total for e in events)
    groups = {
        "optimizer (Adam)": ("adam", "_foreach", "optimizer"),
        "loss (log_softmax or fused logsumexp/exp, gather, sums)": ("log_softmax", "gather", "nll", "_log_softmax",
                                                                    "logsumexp", "exp_", "scatter_add"),
        "dropout masks (bernoulli_ / uniform_)": ("bernoulli", "uniform_", "native_dropout"),
        "backward (autograd)": ("backward", "Backward"),
        "matmul / linear": ("addmm", "mm", "bmm", "linear", "matmul"),
        "attention (SDPA)": ("scaled_dot_product", "_efficient_attention", "_flash_attention"),
        "dtype casts and copies (copy_, to)": ("copy_", "aten::to", "_to_copy"),
        "data (loader, collate)": ("DataLoader", "enumerate", "collate", "pin"),
        "repeat_batch (repeat_interleave/index)": ("repeat_interleave", "index_select", "repeat"),
        "grad norm / clip": ("norm", "clip", "mul_"),
    }
    shares: dict[str, float] = {}
    for event in events:
        name = event.key
        for group, keys in groups.items():
            if any(k in name for k in keys):
                shares[group] = shares.get(group, 0.0) + event.self_cpu_time_total
                break
        else:
            shares["other"] = shares.get("other", 0.0) + event.self_cpu_time_total
    # inclusive times of labelled regions (their ops are also counted in the self-time groups above)
    step_events = [e for e in events if e.key == "seqba::train_step"]
    update_total = step_events[0].cpu_time_total if step_events else step_total
    regions = {"optimizer step": "Optimizer.step", "data loader next": "enumerate(DataLoader)",
               "expand (repeat_batch)": "seqba::expand"}
    inclusive = {name: round(sum(e.cpu_time_total for e in events if e.key.startswith(prefix)) / update_total, 4)
                 for name, prefix in regions.items()}
    result = {
        "recipe": args.recipe, "overrides": args.overrides, "steps": args.steps, "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch": torch.__version__,
        "ms_per_step": step_total / 1000 / args.steps,
        "inclusive_share_of_train_step": inclusive,
        "shares": {k: round(v / step_total, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / args.steps, 2)}
                    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]],
    }
    print(f"{result['ms_per_step']:.0f} ms of profiled CPU self time per update ({args.threads} thread(s))")
    for group, share in result["shares"].items():
        print(f"  {group:40s} {100 * share:5.1f}%")
    print("inclusive share of train_step: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in inclusive.items()))
    print("top ops (self ms per update):")
    for op in result["top_ops"]:
        print(f"  {op['op']:48s} {op['self_ms_per_step']:8.2f}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the cost of the cross-copy consistency term (``seqba.losses.consistency_loss``) in a training step.

One "step" here is the loss end of a translation step, forward and backward, on a (M·B, T, V) tensor of logits
(a leaf, standing in for the decoder's output projection): ``log_softmax`` -> label-smoothed CE summed over the
M·B rows (epsilon 0.1) [+ alpha · consistency_loss] -> divide by the M·B target tokens -> ``backward``. The model
itself is left out: what is measured is exactly what the term adds. Cases, all in the same run and process:

* ``ce``: cross-entropy alone (the step without the term);
* ``ce+sym_kl/<layout>``, ``ce+js/<layout>``: with the term, rows laid out ``adjacent`` or ``tiled``.

Per case: ``ms`` (best of ``--repeat`` timed steps after one warm-up, and the median), ``peak_mb``: the process's
peak resident memory during one step above its resident memory before it (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``; glibc's mmap threshold is pinned at 1 MiB so that freed tensors go back to the OS and
this follows the live tensors), and the term's share over ``ce``. The inputs (logits, targets) are allocated before
and not counted.

On ``--device cuda`` the peak is the CUDA allocator's (``max_memory_allocated``) and steps are synchronised.
Defaults: M = 4, B·T = 1024 distinct target tokens (B = 32 sentences of T = 32), V = 8000 and 32000, float32:

    python benchmarks/bench_consistency.py [--vocab 8000 32000] [--repeat 3] [--out benchmarks/results/consistency.json]
    python benchmarks/bench_consistency.py --device cuda --batch 128 --out benchmarks/results/consistency_cuda.json
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from seqba.losses import consistency_loss, label_smoothed_nll_loss
from seqba.samplers import repeat_batch

PAD = 0


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def pin_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """glibc: serve allocations >= nbytes by mmap and return them on free (M_MMAP_THRESHOLD = -3 in mallopt)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, nbytes))
    except (OSError, AttributeError):
        return False


def peak_rss_mb(fn) -> float | None:
    """Peak resident memory (MiB) while ``fn`` runs, above the resident memory before it; None off Linux."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        before = status_kb("VmRSS")
    except OSError:
        return None
    fn()
    return (status_kb("VmHWM") - before) / 1024


def peak_cuda_mb(fn) -> float:
    """Peak CUDA memory allocated (MiB) while ``fn`` runs, above what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def make_step(logits, target, repeats, layout, kind, alpha):
    ntokens = int(target.ne(PAD).sum())
    pad_mask = target.eq(PAD)

    def step():
        logits.grad = None
        lprobs = logits.log_softmax(-1)  # (M·B, T, V)
        loss, _ = label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=PAD)
        if kind is not None:
            loss = loss + alpha * consistency_loss(lprobs, repeats, layout=layout, pad_mask=pad_mask, kind=kind)
        (loss / ntokens).backward()

    return step


def bench_vocab(vocab, args) -> dict:
    g = torch.Generator().manual_seed(0)
    distinct = torch.randint(1, vocab, (args.batch, args.length), generator=g).to(args.device)
    distinct[: args.batch // 4, args.length * 3 // 4:] = PAD  # some padding, as in a real batch
    rows = args.repeats * args.batch
    logits = torch.randn(rows, args.length, vocab, generator=g).to(args.device).requires_grad_(True)  # (M·B, T, V)
    cuda = logits.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cases = [("ce", None, "adjacent")]
    cases += [(f"ce+{kind}/{layout}", kind, layout) for kind in ("sym_kl", "js") for layout in args.layouts]
    out = {}
    for name, kind, layout in cases:
        target = repeat_batch(distinct, args.repeats, layout)  # (M·B, T)
        step = make_step(logits, target, args.repeats, layout, kind, args.alpha)
        step()  # warm-up
        times = []
        for _ in range(args.repeat):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        out[name] = {"ms": 1e3 * min(times), "ms_median": 1e3 * statistics.median(times), "peak_mb": peak_cuda_mb(step) if cuda else peak_rss_mb(step)}
    for name, row in out.items():
        row["ms_over_ce"] = row["ms"] - out["ce"]["ms"]
        if row["peak_mb"] is not None:
            row["peak_mb_over_ce"] = row["peak_mb"] - out["ce"]["peak_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="M, copies per sample")
    parser.add_argument("--batch", type=int, default=32, help="B, distinct sentences")
    parser.add_argument("--length", type=int, default=32, help="T, target length")
    parser.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--layouts", nargs="+", default=["adjacent", "tiled"])
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3, help="timed steps per case (best and median reported)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (peak memory then from the CUDA allocator)")
    parser.add_argument("--out", default="benchmarks/results/consistency.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pinned = pin_mmap_threshold()

    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "threads")}
        | {"rows": args.repeats * args.batch, "distinct_tokens": args.batch * args.length, "dtype": "float32"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "python": platform.python_version(), "mmap_threshold_pinned": pinned},
        "results": {},
    }
    print(f"M={args.repeats} B={args.batch} T={args.length} ({args.batch * args.length} distinct tokens, "
          f"{args.repeats * args.batch * args.length} rows), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'V':>6} {'case':<20} {'ms best':>9} {'ms median':>10} {'+ms vs ce':>10} {'peak MiB':>9} {'+MiB vs ce':>11}")
    for vocab in args.vocab:
        rows = bench_vocab(vocab, args)
        result["results"][f"V={vocab}"] = rows
        for name, r in rows.items():
            peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
            over = "n/a" if r["peak_mb"] is None else f"{r['peak_mb_over_ce']:+.0f}"
            print(f"{vocab:>6} {name:<20} {r['ms']:>9.1f} {r['ms_median']:>10.1f} {r['ms_over_ce']:>+10.1f} "
                  f"{peak:>9} {over:>11}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark: the cost of the cross-copy consistency term in a training step, unfused (today's pair) and fused.

One "step" here is the loss end of a translation step, forward and backward, on a (M·B, T, V) tensor of logits
(a leaf, standing in for the decoder's output projection), divided by the M·B target tokens. The model itself is
left out: what is measured is exactly what the term adds. Cases, per vocabulary size and logits dtype:

* ``ce``: the fused label-smoothed cross-entropy alone (``seqba.losses.label_smoothed_cross_entropy``): the step
  without the term;
* ``<kind> unfused``: ``log_softmax`` in float32 -> ``label_smoothed_nll_loss`` + alpha · ``consistency_loss``
  (what the translation task computed before the fused term);
* ``<kind> fused``: ``seqba.fused_consistency.cross_entropy_with_consistency``, eager;
* ``<kind> fused compiled``: the same with ``compiled=True`` (each chunk's forward and backward through
  ``torch.compile``; compile time is spent in the warm-up and reported as ``warmup_s``).

Timing: every case is warmed up once, then ``--rounds`` rounds time one step of every case in turn (interleaved,
so that a ratio taken inside a round compares two cases under the same load of a shared machine); reported per
case are the per-round seconds, and per case the median of its per-round ratios to ``ce`` with their range
(``benchmarks/ratios.py``). The process runs with ``seqba.allocator.configure_malloc()`` as ``python -m
seqba.train`` does. Peak memory on the CPU: each case once more in a fresh subprocess (``--peak-case``): the peak
resident memory during one step (after a warm-up step) above its resident memory before it (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``; glibc's mmap threshold pinned at 1 MiB there, so that freed tensors go
back to the OS and the peak follows the live tensors); the logits and targets are allocated before and not
counted (on CUDA: the allocator's ``max_memory_allocated`` in the same process). Defaults: M = 4, B = 128
sentences of T = 32 (4,096 distinct target tokens, 16,384 rows), V = 8,000 and 32,000, float32 and bfloat16 logits,
sym_kl, adjacent copies, 3 rounds::

    python benchmarks/bench_consistency.py --threads 1 [--vocab 8000 32000] [--dtypes float32 bfloat16]
        [--rounds 3] [--out benchmarks/results/consistency.json]
    python benchmarks/bench_consistency.py --device cuda --out benchmarks/results/consistency_cuda.json
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ratios import fmt, per_round_ratios, summarize  # noqa: E402

from seqba.allocator import configure_malloc  # noqa: E402
from seqba.consistency import consistency_kind  # noqa: E402
from seqba.fused_consistency import cross_entropy_with_consistency  # noqa: E402
from seqba.layout import CopyLayout  # noqa: E402
from seqba.losses import consistency_loss, label_smoothed_cross_entropy, label_smoothed_nll_loss  # noqa: E402

PAD = 0
EPSILON = 0.1


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
    fn.logits.grad = None
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
    fn.logits.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def make_inputs(vocab: int, dtype: torch.dtype, args) -> tuple[torch.Tensor, torch.Tensor]:
    """(M·B, T, V) leaf logits and (M·B, T) targets in ``args.layout``, a quarter of the sentences padded."""
    g = torch.Generator().manual_seed(0)
    distinct = torch.randint(1, vocab, (args.batch, args.length), generator=g)
    distinct[: args.batch // 4, args.length * 3 // 4:] = PAD  # some padding, as in a real batch
    layout = CopyLayout(args.repeats, args.layout)
    target = layout.expand(distinct).to(args.device)
    logits = torch.empty(args.repeats * args.batch, args.length, vocab, dtype=dtype, device=args.device)
    for rows in range(0, logits.size(0), 256):  # filled in slices: no float32 copy of the whole batch
        logits[rows:rows + 256] = 3 * torch.randn(logits[rows:rows + 256].shape, generator=g)
    return logits.requires_grad_(True), target


def cases(kinds) -> list[str]:
    return ["ce"] + [f"{kind} {how}" for kind in kinds for how in ("unfused", "fused", "fused compiled")]


def make_step(case: str, logits: torch.Tensor, target: torch.Tensor, args):
    """A closure running one forward + backward of ``case``."""
    ntokens = int(target.ne(PAD).sum())
    layout = CopyLayout(args.repeats, args.layout)
    kind, _, how = case.partition(" ")

    def loss() -> torch.Tensor:
        if case == "ce":
            return label_smoothed_cross_entropy(logits, target, EPSILON, ignore_index=PAD)[0]
        if how == "unfused":
            lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
            ce, _ = label_smoothed_nll_loss(lprobs, target, EPSILON, ignore_index=PAD)
            return ce + args.alpha * consistency_loss(lprobs, args.repeats, layout=args.layout,
                                                      pad_mask=target.eq(PAD), kind=kind)
        return cross_entropy_with_consistency(logits, target, EPSILON, layout, consistency_kind(kind), args.alpha,
                                              ignore_index=PAD, compiled=how == "fused compiled")[0]

    def step():
        logits.grad = None
        (loss() / ntokens).backward()

    step.logits = logits  # the peak functions drop its gradient first: a step's peak includes its new gradient
    return step


def time_group(vocab: int, dtype: torch.dtype, args) -> dict:
    """Warm-up, then ``args.rounds`` interleaved rounds of every case at one vocabulary size and dtype."""
    logits, target = make_inputs(vocab, dtype, args)
    sync = torch.cuda.synchronize if logits.device.type == "cuda" else (lambda: None)
    steps = {case: make_step(case, logits, target, args) for case in cases(args.kinds)}
    out = {case: {"seconds": []} for case in steps}
    for case, step in steps.items():
        start = time.perf_counter()
        step()
        sync()
        out[case]["warmup_s"] = round(time.perf_counter() - start, 3)
    for _ in range(args.rounds):
        for case, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            out[case]["seconds"].append(round(time.perf_counter() - start, 4))
    for case, row in out.items():
        row["over_ce"] = summarize(per_round_ratios(row["seconds"], out["ce"]["seconds"]))
        if logits.device.type == "cuda" and not args.no_peak:  # the allocator's peak: no subprocess needed
            row["peak_mb"] = peak_cuda_mb(steps[case])
    return out


def peak_of_case(vocab: int, dtype: str, case: str, args) -> float | None:
    """Peak memory (MiB) of one step of ``case``, measured in a fresh subprocess (see the module docstring)."""
    command = [sys.executable, __file__, "--peak-case", str(vocab), dtype, case, "--repeats", str(args.repeats),
               "--batch", str(args.batch), "--length", str(args.length), "--layout", args.layout,
               "--alpha", str(args.alpha), "--device", args.device, "--threads", str(args.threads or 0)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def run_peak_case(args) -> None:
    vocab, dtype, case = int(args.peak_case[0]), getattr(torch, args.peak_case[1]), args.peak_case[2]
    cuda = args.device.startswith("cuda")
    if not cuda:
        pin_mmap_threshold()
    logits, target = make_inputs(vocab, dtype, args)
    step = make_step(case, logits, target, args)
    step()  # warm-up (and compile)
    print(json.dumps({"peak_mb": peak_cuda_mb(step) if cuda else peak_rss_mb(step)}))


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average_before": list(os.getloadavg()),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="M, copies per sample")
    parser.add_argument("--batch", type=int, default=128, help="B, distinct sentences")
    parser.add_argument("--length", type=int, default=32, help="T, target length")
    parser.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--kinds", nargs="+", default=["sym_kl"])
    parser.add_argument("--layout", default="adjacent")
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (one step per case each)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (peak memory then from the CUDA allocator)")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--peak-case", nargs=3, metavar=("VOCAB", "DTYPE", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/consistency.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_case:
        run_peak_case(args)
        return
    malloc = configure_malloc()

    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "threads", "peak_case", "no_peak")}
        | {"rows": args.repeats * args.batch, "distinct_tokens": args.batch * args.length,
           "malloc": malloc.get("applied")},
        "machine": machine(),
        "results": {},
    }
    print(f"M={args.repeats} B={args.batch} T={args.length} ({args.batch * args.length} distinct tokens, "
          f"{args.repeats * args.batch * args.length} rows), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"{'V':>6} {'dtype':<9} {'case':<24} {'s per round':<26} {'x ce (median, range)':<22} {'peak MiB':>9} "
          f"{'x ce':>6}")
    for vocab in args.vocab:
        for dtype in args.dtypes:
            rows = time_group(vocab, getattr(torch, dtype), args)
            gc.collect()
            for case, row in rows.items():
                if "peak_mb" not in row:
                    row["peak_mb"] = None if args.no_peak else peak_of_case(vocab, dtype, case, args)
            for case, row in rows.items():
                base = rows["ce"]["peak_mb"]
                row["peak_over_ce"] = None if row["peak_mb"] is None or not base else row["peak_mb"] / base
                peak = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
                over = "n/a" if row["peak_over_ce"] is None else f"{row['peak_over_ce']:.2f}"
                seconds = " ".join(f"{s:.2f}" for s in row["seconds"])
                print(f"{vocab:>6} {dtype:<9} {case:<24} {seconds:<26} {fmt(row['over_ce']):<22} {peak:>9} "
                      f"{over:>6}", flush=True)
            result["results"][f"V={vocab} {dtype}"] = rows
    result["machine"]["load_average_after"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

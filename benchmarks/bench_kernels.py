"""Benchmark: the three CPU kernels seqba replaced in the Transformer's training step, old beside new, fp32 and bf16.

Each case is forward + backward (``torch.autograd.grad``) at the Multi30k M=4 recipe's shapes (about 3,900 rows
of 4 x 1,024 tokens, D=256, H=4, V=8,000), one thread, the old and new variants interleaved ``--rounds`` times;
the figure per variant is the median milliseconds over rounds (``--clock cpu``: the process's CPU time, which
other jobs on shared cores disturb less than wall time; ``--clock wall``: ``perf_counter``).

* attention: ``F.scaled_dot_product_attention`` on (B, H, L, Dh) views of a fused qkv projection, no attention
  dropout (the recipe's ``attention_dropout: 0``), causal and with a key-padding mask; ``sdpa`` as called by
  the old model, ``seqba`` = ``seqba.models.transformer.attention`` (float32 on the CPU for bf16 inputs);
* loss: label-smoothed cross-entropy, 10% pad targets; ``log_softmax + label_smoothed_nll_loss`` (old) vs
  ``label_smoothed_cross_entropy`` (fused, chunked);
* dropout: p=0.2 on (3872, 256); ``F.dropout`` vs ``seqba.models.dropout.dropout``.

Writes ``benchmarks/results/kernels.json`` with the machine and torch version.

    python benchmarks/bench_kernels.py --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ratios import fmt, per_round_ratios, summarize  # noqa: E402  (benchmarks/ratios.py)
from seqba.losses import label_smoothed_cross_entropy, label_smoothed_nll_loss  # noqa: E402
from seqba.models.dropout import dropout  # noqa: E402
from seqba.models.transformer import attention  # noqa: E402


def attention_cases(dtype: torch.dtype, rows: int, length: int, heads: int = 4, head_dim: int = 64):
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(rows, length, 3 * heads * head_dim, generator=g).to(dtype).requires_grad_()
    mask = torch.ones(rows, 1, 1, length, dtype=torch.bool)
    mask[::3, ..., length - 2:] = False

    def make(fn, causal):
        def step():
            q, k, v = (t.view(rows, length, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
            out = fn(q, k, v, None if causal else mask, causal)
            return torch.autograd.grad(out, qkv, torch.ones_like(out))
        return step

    sdpa = lambda q, k, v, m, c: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=c)  # noqa: E731
    ours = lambda q, k, v, m, c: attention(q, k, v, m, 0.0, c)  # noqa: E731
    return {f"attention causal {rows}x{length}": (make(sdpa, True), make(ours, True)),
            f"attention padded {rows}x{length}": (make(sdpa, False), make(ours, False))}


def loss_case(dtype: torch.dtype, tokens: int = 3872, vocab: int = 8000):
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(tokens, vocab, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(4, vocab, (tokens,), generator=g)
    target[::10] = 0

    def old():
        loss, _ = label_smoothed_nll_loss(F.log_softmax(logits, -1, dtype=torch.float32), target, 0.1, 0)
        return torch.autograd.grad(loss, logits)

    def new():
        loss, _ = label_smoothed_cross_entropy(logits, target, 0.1, 0)
        return torch.autograd.grad(loss, logits)

    return {f"loss {tokens}x{vocab}": (old, new)}


def dropout_case(dtype: torch.dtype, rows: int = 3872, dim: int = 256):
    x = torch.randn(rows, dim).to(dtype).requires_grad_()
    grad = torch.ones_like(x)
    old = lambda: torch.autograd.grad(F.dropout(x, 0.2, True), x, grad)  # noqa: E731
    new = lambda: torch.autograd.grad(dropout(x, 0.2), x, grad)  # noqa: E731
    return {f"dropout {rows}x{dim}": (old, new)}


def timed(fn, repeat: int, clock) -> float:
    fn()
    start = clock()
    for _ in range(repeat):
        fn()
    return (clock() - start) / repeat * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5, help="calls per timing")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernels.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results: dict[str, dict] = {}
    for dtype in (torch.float32, torch.bfloat16):
        cases = {**attention_cases(dtype, 352, 11), **attention_cases(dtype, 64, 60), **loss_case(dtype),
                 **dropout_case(dtype)}
        for name, (old, new) in cases.items():
            times = {"old": [], "new": []}
            for _ in range(args.rounds):
                times["old"].append(timed(old, args.repeat, clock))
                times["new"].append(timed(new, args.repeat, clock))
            old_ms, new_ms = statistics.median(times["old"]), statistics.median(times["new"])
            key = f"{name} {str(dtype).removeprefix('torch.')}"
            speedup = summarize(per_round_ratios(times["old"], times["new"]), 3)  # per round, median, range
            results[key] = {"old_ms": round(old_ms, 2), "new_ms": round(new_ms, 2), "speedup": speedup}
            print(f"{key:36s} old {old_ms:8.2f} ms   seqba {new_ms:8.2f} ms   {fmt(speedup)}x", flush=True)
    out = {"clock": args.clock, "rounds": args.rounds, "repeat": args.repeat, "threads": 1,
           "machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version(),
           "torch": torch.__version__, "note": "forward + backward per call; old and new interleaved", "cases": results}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

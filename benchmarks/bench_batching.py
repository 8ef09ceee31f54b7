"""Benchmark: one epoch of token-budget batches for 4.5M WMT-like sentence lengths.

Lengths are lognormal with mean ~28 tokens, clipped to [1, 256] (the WMT16 en-de training set has ~4.5M pairs).
Measures, best of ``--repeat`` runs:

* ``full_pipeline_s``: what one epoch costs from scratch: the sampler's construction (sort + batch boundaries) and
  the epoch's batches (seeded tie shuffle, stable length sort, split, batch-order shuffle);
* ``epoch_s``: a later epoch on a built sampler (shuffle + sort + split + order);
* ``batching_s``: cutting the sorted lengths into batches alone (``batch_boundaries``);
* ``num_batches`` and ``padding_efficiency`` (real tokens / padded slots).

Reference on the 2-core dev machine (fairseq Cython ``batch_by_size_vec``): ~48 ms on sorted input, full pipeline
(permute + mergesorts + batch) ~1.1 s. Targets: full pipeline <= 0.4 s, batching <= 50 ms, efficiency >= 0.95.

    python benchmarks/bench_batching.py [--out benchmarks/results/batching.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from seqba.samplers import TokenBudgetBatchSampler, batch_boundaries


def wmt_lengths(n: int, seed: int = 0) -> np.ndarray:
    sigma = 0.6
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(28.0) - sigma**2 / 2, sigma, n)
    return np.clip(np.round(lengths), 1, 256).astype(np.int64)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sentences", type=int, default=4_500_000)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/batching.json")
    args = parser.parse_args()

    lengths = wmt_lengths(args.num_sentences)

    def full():
        sampler = TokenBudgetBatchSampler(lengths, args.max_tokens, seed=1)
        sampler.batches()

    sampler = TokenBudgetBatchSampler(lengths, args.max_tokens, seed=1)
    epochs = iter(range(1, 10**6))

    def epoch():
        sampler._cache = None
        sampler.batches(next(epochs))

    sorted_lengths = np.sort(lengths.astype(np.uint16), kind="stable")
    result = {
        "num_sentences": args.num_sentences,
        "mean_length": float(lengths.mean()),
        "max_tokens": args.max_tokens,
        "full_pipeline_s": best_of(args.repeat, full),
        "epoch_s": best_of(args.repeat, epoch),
        "batching_s": best_of(args.repeat, lambda: batch_boundaries(sorted_lengths, args.max_tokens)),
        "num_batches": len(sampler),
        "padding_efficiency": sampler.padding_efficiency,
        "machine": f"{platform.machine()} {platform.processor()} python {platform.python_version()} numpy {np.__version__}",
    }
    for key, value in result.items():
        print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

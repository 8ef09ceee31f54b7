"""Benchmark: one epoch of token-budget batches for 4.5M WMT-like sentence pairs, beside fairseq's Cython batching.

Source lengths are lognormal with mean ~28 tokens, clipped to [1, 256]; target lengths are the source lengths times a
lognormal ratio (sigma 0.15), clipped alike (the WMT16 en-de training set has ~4.5M pairs). Batches are cut on
``num_tokens = max(src, tgt)`` with ``max_tokens`` (4096) as fairseq's ``LanguagePairDataset`` does. Measures,
best of ``--repeat`` runs:

* ``full_pipeline_s``: one epoch from scratch: the sampler's construction (sort + batch boundaries) and the epoch's
  batches (seeded tie shuffle, stable length sort, split, batch-order shuffle);
* ``epoch_s``: a later epoch on a built sampler (shuffle + sort + split + order);
* ``batching_s``: cutting the sorted lengths into batches alone (``batch_boundaries``);
* ``iterate_lists_s`` / ``iterate_arrays_s``: iterating the epoch's batches (cached) as the DataLoader does, as
  lists of ints (default) or as int64 arrays (``yield_arrays=True``);
* ``padding_efficiency_num_tokens`` (on ``max(src, tgt)``, what the sampler batches on) and
  ``padding_efficiency_src_tgt`` (of the padded source and target tensors).

With ``--fairseq-src`` (a fairseq checkout, or its ``fairseq/data/data_utils_fast.pyx``) and Cython installed, it
compiles that one file in a temporary directory and measures in the same process fairseq's pipeline
(``LanguagePairDataset.ordered_indices``: permutation + two mergesorts; ``num_tokens_vec``;
``batch_by_size_vec``; batch shuffle) and its batching step alone on the same sorted input, and checks that both
give the same batches. Without them it prints one line saying why and skips. Nothing from fairseq is kept.

    python benchmarks/bench_batching.py [--fairseq-src PATH] [--out benchmarks/results/batching.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from seqba.samplers import TokenBudgetBatchSampler, batch_boundaries


def wmt_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(src, tgt) (n,) int64 lengths in tokens, WMT-like."""
    sigma = 0.6
    rng = np.random.default_rng(seed)
    src = np.clip(np.round(rng.lognormal(np.log(28.0) - sigma**2 / 2, sigma, n)), 1, 256)
    tgt = np.clip(np.round(src * rng.lognormal(0.0, 0.15, n)), 1, 256)
    return src.astype(np.int64), tgt.astype(np.int64)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def build_fairseq_batching(source: str | None) -> tuple[Callable | None, str]:
    """Compile fairseq's ``data_utils_fast.pyx`` in a temp dir; return (``batch_by_size_vec``, note) or (None, why)."""
    if not source:
        return None, "no fairseq source given (--fairseq-src or $FAIRSEQ_SRC)"
    pyx = Path(source)
    if pyx.is_dir():
        pyx = pyx / "fairseq" / "data" / "data_utils_fast.pyx"
    if not pyx.is_file():
        return None, f"{pyx} not found"
    try:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as err:
        return None, f"Cython/setuptools not installed ({err.name})"
    build = Path(tempfile.mkdtemp(prefix="fairseq_fast_"))
    (build / "data_utils_fast.pyx").write_text(pyx.read_text())
    ext = Extension("data_utils_fast", [str(build / "data_utils_fast.pyx")], language="c++",
                    include_dirs=[np.get_include()], extra_compile_args=["-O3"])
    dist = Distribution({"ext_modules": cythonize([ext], quiet=True, build_dir=str(build))})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib, cmd.build_temp = str(build), str(build / "tmp")
    cwd = os.getcwd()
    try:
        os.chdir(build)
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)
    (so,) = build.glob("data_utils_fast*.so")
    spec = importlib.util.spec_from_file_location("data_utils_fast", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.batch_by_size_vec, f"fairseq {pyx} compiled with Cython in {build}"


def fairseq_figures(batch_by_size_vec: Callable, src: np.ndarray, tgt: np.ndarray, num_tokens: np.ndarray,
                    max_tokens: int, repeat: int, ours: np.ndarray) -> dict:
    """fairseq's epoch pipeline and batching step, timed; and whether its batches equal seqba's (sizes)."""
    rng = np.random.default_rng(1)

    def pipeline() -> list:
        indices = rng.permutation(len(src)).astype(np.int64)  # LanguagePairDataset.ordered_indices (shuffle)
        indices = indices[np.argsort(tgt[indices], kind="mergesort")]
        indices = indices[np.argsort(src[indices], kind="mergesort")]
        batches = batch_by_size_vec(indices, num_tokens[indices], max_tokens, -1, 1)
        rng.shuffle(batches)  # EpochBatchIterator shuffles the batches
        return batches

    order = np.argsort(num_tokens, kind="stable").astype(np.int64)
    sorted_tokens = num_tokens[order]
    theirs = batch_by_size_vec(order, sorted_tokens, max_tokens, -1, 1)
    sizes = np.array([len(b) for b in theirs])
    return {
        "fairseq_full_pipeline_s": best_of(repeat, pipeline),
        "fairseq_batching_s": best_of(repeat, lambda: batch_by_size_vec(order, sorted_tokens, max_tokens, -1, 1)),
        "fairseq_num_batches": len(theirs),
        "fairseq_same_batches": bool(np.array_equal(sizes, np.diff(ours))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sentences", type=int, default=4_500_000)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fairseq-src", default=os.environ.get("FAIRSEQ_SRC"),
                        help="fairseq checkout or its data_utils_fast.pyx ($FAIRSEQ_SRC)")
    parser.add_argument("--out", default="benchmarks/results/batching.json")
    args = parser.parse_args()

    src, tgt = wmt_lengths(args.num_sentences)
    num_tokens = np.maximum(src, tgt)

    def full():
        TokenBudgetBatchSampler(num_tokens, args.max_tokens, seed=1).batches()

    sampler = TokenBudgetBatchSampler(num_tokens, args.max_tokens, seed=1)
    arrays = TokenBudgetBatchSampler(num_tokens, args.max_tokens, seed=1, yield_arrays=True)
    sampler.batches(), arrays.batches()  # cache epoch 0: time the iteration alone
    epochs = iter(range(1, 10**6))

    def epoch():
        sampler._cache = None
        sampler.batches(next(epochs))

    sorted_tokens = np.sort(num_tokens.astype(np.uint16), kind="stable")
    offsets = batch_boundaries(sorted_tokens, args.max_tokens)
    result = {
        "num_sentences": args.num_sentences,
        "mean_length": float(num_tokens.mean()),
        "max_tokens": args.max_tokens,
        "full_pipeline_s": best_of(args.repeat, full),
        "epoch_s": best_of(args.repeat, epoch),
        "batching_s": best_of(args.repeat, lambda: batch_boundaries(sorted_tokens, args.max_tokens)),
        "iterate_lists_s": best_of(args.repeat, lambda: list(sampler)),
        "iterate_arrays_s": best_of(args.repeat, lambda: list(arrays)),
        "num_batches": len(sampler),
        "padding_efficiency_num_tokens": sampler.padding_efficiency,
        "padding_efficiency_src_tgt": sampler.padding_efficiency_of(src, tgt, epoch=0),
    }
    batch_by_size_vec, note = build_fairseq_batching(args.fairseq_src)
    if batch_by_size_vec is None:
        print(f"fairseq comparison skipped: {note}")
    else:
        print(note)
        result |= fairseq_figures(batch_by_size_vec, src, tgt, num_tokens, args.max_tokens, args.repeat, offsets)
        result["fairseq_over_seqba_full_pipeline"] = result["fairseq_full_pipeline_s"] / result["full_pipeline_s"]
        result["fairseq_over_seqba_batching"] = result["fairseq_batching_s"] / result["batching_s"]
    result["machine"] = (f"{platform.machine()} {platform.processor()} python {platform.python_version()} "
                         f"numpy {np.__version__}")
    for key, value in result.items():
        print(f"{key:>34}: {value:.4f}" if isinstance(value, float) else f"{key:>34}: {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

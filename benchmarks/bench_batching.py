"""Benchmark: one epoch of token-budget batches for 4.5M WMT-like sentence pairs, beside fairseq's Cython batching.

Source lengths are lognormal with mean ~28 tokens, clipped to [1, 256]; target lengths are the source lengths times a
lognormal ratio (sigma 0.15), clipped alike (the WMT16 en-de training set has ~4.5M pairs). Batches are cut on
``num_tokens = max(src, tgt)`` with ``max_tokens`` (4096) as fairseq's ``LanguagePairDataset`` does.

Every figure is per round over ``--rounds`` rounds; within a round seqba and fairseq run back to back (which goes
first alternates), and the JSON holds each time per round, each fairseq / seqba ratio per round, and their
median with the range (min, max) -- the headline is that median, never the best round:

* ``full_pipeline``: one epoch from scratch, ending in the epoch's list of per-batch int64 index arrays. seqba:
  ``TokenBudgetBatchSampler(...).batches(0)`` (construction: sort + batch boundaries; the epoch: seeded
  permutation, stable length sort, split into arrays, batch-order shuffle). fairseq: the same permutation and sort
  (so that both give the SAME batches; fairseq's own ``ordered_indices`` sorts twice, by tgt then src), its
  ``batch_by_size_vec`` (which returns the index arrays), the same batch-order shuffle;
* ``batching``: the batching step alone on the same sorted input, both ending in the per-batch index arrays
  (seqba: ``batch_boundaries`` + ``np.split``; fairseq: ``batch_by_size_vec``);
* seqba alone: ``boundaries`` (``batch_boundaries``, offsets only), ``epoch`` (a later epoch on a built sampler),
  ``iterate_lists`` / ``iterate_arrays`` (iterating the cached epoch as lists of ints or as int64 arrays);
* ``padding_efficiency_num_tokens`` (on ``max(src, tgt)``) and ``padding_efficiency_src_tgt`` (of the padded
  source and target tensors).

``same_batches`` compares, array by array, what the two TIMED pipelines returned (full pipeline and batching step).
With ``--fairseq-src`` (a fairseq checkout, or its ``fairseq/data/data_utils_fast.pyx``) and Cython installed, it
compiles that one file in a temporary directory; without them it prints one line saying why and times seqba alone.
Nothing from fairseq is kept.

    python benchmarks/bench_batching.py [--fairseq-src PATH] [--rounds 5] [--out benchmarks/results/batching.json]
    python benchmarks/bench_batching.py --num-sentences 20000 --rounds 2 --out /tmp/b.json   # a quick check
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

from ratios import per_round_ratios, summarize  # benchmarks/ratios.py (this script's folder is on sys.path)

from seqba.samplers import TokenBudgetBatchSampler, batch_boundaries


def wmt_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(src, tgt) (n,) int64 lengths in tokens, WMT-like."""
    sigma = 0.6
    rng = np.random.default_rng(seed)
    src = np.clip(np.round(rng.lognormal(np.log(28.0) - sigma**2 / 2, sigma, n)), 1, 256)
    tgt = np.clip(np.round(src * rng.lognormal(0.0, 0.15, n)), 1, 256)
    return src.astype(np.int64), tgt.astype(np.int64)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """True when both lists hold the same index arrays in the same order."""
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


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


def fairseq_epoch(batch_by_size_vec: Callable, lengths: np.ndarray, max_tokens: int, seed: int,
                  epoch: int) -> list[np.ndarray]:
    """One epoch's batches through fairseq's batching, with seqba's permutation, sort and batch-order shuffle.

    ``lengths``: (N,) the sampler's length array (uint16); returns the list of (batch size,) int64 index arrays that
    ``TokenBudgetBatchSampler(lengths, max_tokens, seed=seed).batches(epoch)`` returns.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    order = perm[np.argsort(lengths[perm], kind="stable")]
    batches = batch_by_size_vec(order, lengths[order].astype(np.int64), max_tokens, -1, 1)  # list of arrays
    return [batches[i] for i in rng.permutation(len(batches))]


def seqba_batching(order: np.ndarray, sorted_tokens: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """The batching step as fairseq's ``batch_by_size_vec`` does it: sorted input -> per-batch index arrays."""
    return np.split(order, batch_boundaries(sorted_tokens, max_tokens)[1:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sentences", type=int, default=4_500_000)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median and range reported)")
    parser.add_argument("--fairseq-src", default=os.environ.get("FAIRSEQ_SRC"),
                        help="fairseq checkout or its data_utils_fast.pyx ($FAIRSEQ_SRC)")
    parser.add_argument("--out", default="benchmarks/results/batching.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")

    src, tgt = wmt_lengths(args.num_sentences)
    num_tokens = np.maximum(src, tgt)
    seed, max_tokens = 1, args.max_tokens
    sampler = TokenBudgetBatchSampler(num_tokens, max_tokens, seed=seed)
    arrays = TokenBudgetBatchSampler(num_tokens, max_tokens, seed=seed, yield_arrays=True)
    sampler.batches(), arrays.batches()  # cache epoch 0: time the iteration alone
    lengths = sampler._lengths  # (N,) uint16, what the sampler sorts
    order = np.argsort(lengths, kind="stable").astype(np.int64)
    sorted_tokens = lengths[order].astype(np.int64)  # fairseq's num_tokens_vec dtype; given to both
    epochs = iter(range(1, 10**6))

    def later_epoch():
        sampler._cache = None
        return sampler.batches(next(epochs))

    batch_by_size_vec, note = build_fairseq_batching(args.fairseq_src)
    print(note if batch_by_size_vec else f"fairseq comparison skipped: {note}")
    pairs = {  # name -> (seqba, fairseq or None): both return the epoch's per-batch index arrays
        "full_pipeline": (lambda: TokenBudgetBatchSampler(num_tokens, max_tokens, seed=seed).batches(0),
                          batch_by_size_vec and (lambda: fairseq_epoch(batch_by_size_vec, lengths, max_tokens,
                                                                       seed, 0))),
        "batching": (lambda: seqba_batching(order, sorted_tokens, max_tokens),
                     batch_by_size_vec and (lambda: batch_by_size_vec(order, sorted_tokens, max_tokens, -1, 1))),
    }
    alone = {"boundaries": lambda: batch_boundaries(sorted_tokens, max_tokens), "epoch": later_epoch,
             "iterate_lists": lambda: list(sampler), "iterate_arrays": lambda: list(arrays)}
    seconds: dict[str, list[float]] = {}
    same = {name: True for name in pairs}
    for r in range(args.rounds):
        for name, (ours, theirs) in pairs.items():
            runs = [("seqba", ours)] + ([("fairseq", theirs)] if theirs else [])
            results = {}
            for who, fn in (runs if r % 2 == 0 else runs[::-1]):
                took, results[who] = timed(fn)
                seconds.setdefault(f"{who}_{name}_s", []).append(took)
            if theirs:
                same[name] &= same_arrays(results["seqba"], results["fairseq"])
        for name, fn in alone.items():
            seconds.setdefault(f"seqba_{name}_s", []).append(timed(fn)[0])

    result = {
        "num_sentences": args.num_sentences, "mean_length": float(num_tokens.mean()), "max_tokens": max_tokens,
        "rounds": args.rounds, "num_batches": len(sampler),
        "padding_efficiency_num_tokens": sampler.padding_efficiency,
        "padding_efficiency_src_tgt": sampler.padding_efficiency_of(src, tgt, epoch=0),
        "seconds": {name: summarize(values, 6) for name, values in seconds.items()},
    }
    if batch_by_size_vec:
        result["fairseq_over_seqba"] = {name: summarize(per_round_ratios(seconds[f"fairseq_{name}_s"],
                                                                         seconds[f"seqba_{name}_s"]))
                                        for name in pairs}
        result["same_batches"] = same
    result["machine"] = (f"{platform.machine()} {platform.processor()} python {platform.python_version()} "
                         f"numpy {np.__version__}")
    for name, row in result["seconds"].items():
        print(f"{name:>30}: median {row['median']:.4f} s  (min {row['min']:.4f}, max {row['max']:.4f})")
    for name, row in result.get("fairseq_over_seqba", {}).items():
        rounds = " / ".join(f"{v:.2f}" for v in row["per_round"])
        print(f"{'fairseq / seqba ' + name:>30}: median {row['median']:.2f}x  (per round {rounds}); "
              f"same batches: {result['same_batches'][name]}")
    print(f"{'padding efficiency':>30}: {result['padding_efficiency_num_tokens']:.4f} (max(src, tgt)), "
          f"{result['padding_efficiency_src_tgt']:.4f} (src and tgt tensors)")
    if batch_by_size_vec and not all(same.values()):
        print("error: seqba and fairseq gave different batches", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

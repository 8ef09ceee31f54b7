"""Headline figures from benchmark rounds: the MEDIAN of per-round ratios with their range, never the best round.

Rounds interleave the settings, so a ratio taken inside one round compares two settings under the same load of a
shared machine; the median over rounds resists one disturbed round, and the range shows how far rounds disagree.

    summarize([2.58, 3.24, 3.38])  -> {"per_round": [2.58, 3.24, 3.38], "median": 3.24, "min": 2.58, "max": 3.38}
    fmt(summarize([2.58, 3.24, 3.38]))  -> "3.24 (2.58–3.38)"

``python benchmarks/ratios.py`` prints every ratio the README quotes, re-derived from the committed JSON in
``benchmarks/results/`` (:data:`HEADLINES`); ``tests/test_readme_blocks.py`` checks that the README quotes them so.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


def summarize(values: Sequence[float], digits: int = 4) -> dict:
    """{"per_round", "median", "min", "max"} of per-round values (one per round, in round order).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no rounds to summarize")
    return {"per_round": [round(v, digits) for v in values], "median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


def per_round_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """``numerators[r] / denominators[r]`` for every round ``r`` (two settings timed in the same round).

    Raises:
        ValueError: the two lists have different lengths (not the same rounds).
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} rounds against {len(denominators)}: not the same rounds")
    return [a / b for a, b in zip(numerators, denominators)]


def fmt(summary: dict, digits: int = 2) -> str:
    """"median (min–max)", or the one value when there was one round or all rounds agree to ``digits``."""
    median, low, high = (f"{summary[k]:.{digits}f}" for k in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}–{high})"


def load(name: str) -> dict:
    """benchmarks/results/NAME.json."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def recipe_speed(name: str, setting: str, reference: str) -> dict:
    """Per-round ratio of ``setting`` to ``reference`` in a bench_recipe_speed.py result (rates per round)."""
    rows = load(name)["settings"]
    return summarize(per_round_ratios(rows[setting]["per_round"], rows[reference]["per_round"]))


def decode_speed(name: str, setting: str, reference: str) -> dict:
    """Per-round speed of ``setting`` over ``reference`` in a bench_decode.py result (seconds per round)."""
    rows = load(name)["settings"]
    return summarize(per_round_ratios(rows[reference]["seconds"], rows[setting]["seconds"]))


def malloc(setting: str) -> dict:
    """Per-round tokens/s of an allocator ``setting`` over glibc's defaults (bench_train.py --malloc-compare)."""
    rows = load("malloc")["settings"]
    return summarize(per_round_ratios(rows[setting]["runs"], rows["default"]["runs"]))


def stored(name: str, *keys: str) -> dict:
    """A per-round summary a benchmark already stored (``{"per_round", "median", "min", "max"}``) under ``keys``."""
    node = load(name)
    for key in keys:
        node = node[key]
    return summarize(node["per_round"])


def mfu(name: str, *keys: str) -> dict:
    """Per-round MFU on this CPU of the setting under ``keys``: its ``model_flops_per_s`` of each round over the GEMM
    peak of its precision and thread count that the same run measured (``peaks``; benchmarks/mfu.py)."""
    result = load(name)
    node = result
    for key in keys:
        node = node[key]
    peak = result["peaks"][f"{node['mfu']['precision']}_{node['mfu']['threads']}t"]["flops_per_s"]
    return summarize([flops / peak for flops in node["model_flops_per_s"]])


# README text -> how its figure is derived. Each string is what the README prints for it (fmt of the summary).
HEADLINES: dict[str, Callable[[], dict]] = {
    "recipe speed: 361bed0 bf16 / 361bed0 fp32": lambda: recipe_speed("recipe_speed", "ref_bf16",
                                                                      "ref_fp32_default_malloc"),
    "recipe speed: fp32 glibc defaults / 361bed0 fp32": lambda: recipe_speed("recipe_speed", "fp32_default_malloc",
                                                                             "ref_fp32_default_malloc"),
    "recipe speed: fp32 mallopt / 361bed0 fp32": lambda: recipe_speed("recipe_speed", "fp32",
                                                                      "ref_fp32_default_malloc"),
    "recipe speed: bf16 / 361bed0 fp32": lambda: recipe_speed("recipe_speed", "bf16", "ref_fp32_default_malloc"),
    "compile: fp32 compiled / fp32 eager": lambda: recipe_speed("recipe_speed_compile", "fp32_compiled", "fp32"),
    "compile: bf16 compiled / bf16 eager": lambda: recipe_speed("recipe_speed_compile", "bf16_compiled", "bf16"),
    "xeon amx: bf16 / fp32": lambda: recipe_speed("recipe_speed_auto_xeon", "bf16", "fp32"),
    "xeon amx: auto / bf16": lambda: recipe_speed("recipe_speed_auto_xeon", "auto", "bf16"),
    "xeon amx: auto / fp32": lambda: recipe_speed("recipe_speed_auto_xeon", "auto", "fp32"),
    "mnist: fp32 / fp32 glibc defaults": lambda: recipe_speed("recipe_speed_mnist", "fp32", "fp32_default_malloc"),
    "mnist: bf16": lambda: recipe_speed("recipe_speed_mnist", "bf16", "fp32_default_malloc"),
    "mnist: fp32 compiled": lambda: recipe_speed("recipe_speed_mnist", "fp32_compiled", "fp32_default_malloc"),
    "mnist: bf16 compiled": lambda: recipe_speed("recipe_speed_mnist", "bf16_compiled", "fp32_default_malloc"),
    "mnist: fp32 compiled / fp32 eager": lambda: recipe_speed("recipe_speed_mnist", "fp32_compiled", "fp32"),
    "ptb: fp32 / fp32 glibc defaults": lambda: recipe_speed("recipe_speed_ptb", "fp32", "fp32_default_malloc"),
    "ptb: bf16": lambda: recipe_speed("recipe_speed_ptb", "bf16", "fp32_default_malloc"),
    "ptb: fp32 compiled": lambda: recipe_speed("recipe_speed_ptb", "fp32_compiled", "fp32_default_malloc"),
    "ptb: bf16 compiled": lambda: recipe_speed("recipe_speed_ptb", "bf16_compiled", "fp32_default_malloc"),
    "consistency: Multi30k bf16 step, BA + sym_kl / BA": lambda: recipe_speed("recipe_speed_symkl", "bf16_symkl",
                                                                             "bf16"),
    "consistency: PTB M=10 + sym_kl, fused / c1e2d5a's unfused pair": lambda: recipe_speed(
        "recipe_speed_ptb_symkl_fused", "fp32_default_malloc", "ref_fp32_default_malloc"),
    "decode: KV cache / recomputed prefix": lambda: decode_speed("decode", "cached", "uncached"),
    "decode: greedy / beam 4": lambda: decode_speed("decode", "greedy", "cached"),
    "decode: bf16 / fp32 beam 4": lambda: decode_speed("decode", "bf16", "cached"),
    "decode: untrained, length cap 1.2x+10 / 0x+200": lambda: decode_speed("decode_maxlen_untrained", "cached",
                                                                           "cached_a0_b200"),
    "batching: fairseq / seqba, full pipeline": lambda: stored("batching", "fairseq_over_seqba", "full_pipeline"),
    "batching: fairseq / seqba, batching step": lambda: stored("batching", "fairseq_over_seqba", "batching"),
    "train: seqba M=1 / bare loop": lambda: stored("train", "ratio_seqba_over_bare"),
    "train: seqba M=4 / seqba M=1 (tokens/s)": lambda: stored("train", "ratio_m4_over_m1"),
    **{f"train settings: seqba / bare, {setting}": (lambda s=setting: stored(
        "train_settings", "settings", s, "per_round", "seqba_over_bare"))
       for setting in ("fp32_eager", "bf16_eager", "fp32_compiled", "bf16_compiled")},
    **{f"train settings: seqba {setting} / seqba fp32_eager": (lambda s=setting: stored(
        "train_settings", "settings", s, "per_round", "seqba_over_fp32_eager"))
       for setting in ("bf16_eager", "fp32_compiled", "bf16_compiled")},
    **{f"kernels: {case}": (lambda c=case: stored("kernels", "cases", c, "speedup"))
       for case in ("attention causal 352x11 bfloat16", "attention padded 352x11 bfloat16",
                    "attention causal 64x60 bfloat16", "attention padded 64x60 bfloat16",
                    "attention causal 64x60 float32", "loss 3872x8000 bfloat16", "loss 3872x8000 float32",
                    "dropout 3872x256 float32", "dropout 3872x256 bfloat16")},
    "allocator: mallopt / glibc defaults": lambda: malloc("mallopt"),
    "allocator: env variables": lambda: malloc("env"),
    "allocator: tcmalloc": lambda: malloc("tcmalloc"),
    "allocator: jemalloc": lambda: malloc("jemalloc"),
    "fork: ba_fork_enc / BA, bf16 target tokens/s": lambda: stored("fork", "settings", "ba_fork_enc_bf16",
                                                                   "speed_over_ba"),
    "fork: ba_fork_top / BA, bf16 target tokens/s": lambda: stored("fork", "settings", "ba_fork_top_bf16",
                                                                   "speed_over_ba"),
    "fork: ba_fork_enc / BA, bf16 peak RSS": lambda: stored("fork", "settings", "ba_fork_enc_bf16", "rss_over_ba"),
    "fork: ba_fork_top / BA, bf16 peak RSS": lambda: stored("fork", "settings", "ba_fork_top_bf16", "rss_over_ba"),
    "MFU: Multi30k recipe bf16, 1 thread": lambda: mfu("mfu_recipe_speed", "settings", "bf16"),
    "MFU: Multi30k recipe fp32, 1 thread": lambda: mfu("mfu_recipe_speed", "settings", "fp32_default_malloc"),
    **{f"MFU: bench_train small bf16, {name}": (lambda n=name: mfu("mfu_train_small", n))
       for name in ("bare_m1", "seqba_m1", "seqba_m4")},
    **{f"MFU: bench_train Transformer-base bf16, {name}": (lambda n=name: mfu("mfu_train_base", n))
       for name in ("bare_m1", "seqba_m1", "seqba_m4")},
    **{f"consistency: {kind} / fused CE, V=32000 {dtype}": (lambda k=kind, d=dtype: stored(
        "consistency", "results", f"V=32000 {d}", k, "over_ce"))
       for dtype in ("float32", "bfloat16") for kind in ("sym_kl unfused", "sym_kl fused", "sym_kl fused compiled")},
    **{f"consistency on the H200: {kind} / CE, V=32000 {dtype}": (lambda k=kind, d=dtype: stored(
        "consistency_cuda", "results", f"V=32000 {d}", k, "over_ce"))
       for kind, dtype in (("sym_kl fused compiled", "float32"), ("sym_kl fused compiled", "bfloat16"),
                           ("sym_kl fused", "float32"), ("sym_kl unfused", "float32"))},
    "word cache: line by line / cached, cold": lambda: stored("word_cache", "speedup", "cached cold"),
    "word cache: line by line / cached, warm": lambda: stored("word_cache", "speedup", "cached warm"),
    "MFU run: Multi30k recipe bf16 / fp32 tokens/s": lambda: recipe_speed("mfu_recipe_speed", "bf16",
                                                                          "fp32_default_malloc"),
}


def main() -> None:
    for label, derive in HEADLINES.items():
        summary = derive()
        print(f"{label:<50} {fmt(summary):<20} per round {summary['per_round']}")


if __name__ == "__main__":
    main()

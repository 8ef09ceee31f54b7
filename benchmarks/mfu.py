"""MFU on this CPU: a run's model FLOP/s over the peak matmul FLOP/s measured on the same machine, in the same run.

The FLOPs are the model's (``seqba.flops``: 6 x parameters x tokens plus attention, as nanoGPT and PaLM's appendix
count them), logged by the trainer as ``model_flops_per_s``. The peak is the fastest of the step's own GEMM shapes
(``seqba.flops.matmul_peak``) in float32 and bfloat16, with one thread and with all threads, timed by the benchmark
that reports the MFU, so that both numbers come from the same machine under the same load.
"""
from __future__ import annotations

import os

import torch

from seqba.flops import matmul_peak

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}
NAMES = {"no": "fp32", "bf16": "bf16"}  # train.mixed_precision -> what the output calls it
FLOPS_NOTE = ("model FLOPs counted as 6 x parameters x tokens + attention (12 x d_model x query x key per layer), "
              "as nanoGPT / PaLM appendix B (seqba.flops), as executed (a fork's shared layers once per sample); "
              "peak: fastest torch.matmul of the step's GEMM shapes, measured in this run (best of before/after)")


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def step_shapes(tokens: int, d_model: int, ffn_dim: int, vocab_size: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) GEMMs of a Transformer step over ``tokens`` rows: q/k/v, the FFN's two, the output head."""
    return [(tokens, d_model, 3 * d_model), (tokens, d_model, ffn_dim), (tokens, ffn_dim, d_model),
            (tokens, d_model, vocab_size)]


def measure_peaks(shapes: list[tuple[int, int, int]], threads: list[int] | None = None, repeat: int = 3) -> dict:
    """``{"<precision>_<n>t": matmul_peak(...)}`` for precision in ``no`` (float32) / ``bf16`` and each thread count
    (default: 1 and every core this process may use)."""
    threads = threads or sorted({1, cores()})
    return {f"{precision}_{n}t": matmul_peak(shapes, dtype, threads=n, repeat=repeat)
            for precision, dtype in DTYPES.items() for n in threads}


def best_peaks(*measurements: dict) -> dict:
    """Per key, the measurement with the highest ``flops_per_s`` (peaks timed before and after a benchmark's runs:
    a peak is the best the machine gave, and a run of other jobs on shared cores only lowers it)."""
    keys = {key for peaks in measurements for key in peaks}
    return {key: max((peaks[key] for peaks in measurements if key in peaks), key=lambda p: p["flops_per_s"])
            for key in sorted(keys)}


def mfu(flops_per_s: float, peaks: dict, precision: str, threads: int) -> float | None:
    """``flops_per_s`` over the measured peak of ``precision`` (``no`` / ``bf16``) at ``threads``; None if that peak
    was not measured."""
    peak = peaks.get(f"{precision}_{threads}t")
    return None if peak is None else flops_per_s / peak["flops_per_s"]


def mfu_row(flops_per_s: float, peaks: dict, precision: str, threads: int | None) -> dict:
    """MFU of a run in ``precision`` at ``threads`` (None: all cores): over the same precision's peak, and over
    the faster of the two precisions' peaks (what the machine could give at that thread count)."""
    threads = threads or cores()
    best = max((p["flops_per_s"] for key, p in peaks.items() if key.endswith(f"_{threads}t")), default=None)
    return {"model_flops_per_s": flops_per_s, "threads": threads, "precision": precision,
            "mfu": mfu(flops_per_s, peaks, precision, threads),
            "mfu_of_best_precision": None if best is None else flops_per_s / best}


def describe(peaks: dict) -> str:
    """One line per measured peak: ``bf16_1t  123.4 GFLOP/s  (4096x256x8000)``."""
    return "\n".join(f"  peak {key:<8} {p['flops_per_s'] / 1e9:8.1f} GFLOP/s  ({'x'.join(map(str, p['shape']))})"
                     for key, p in peaks.items())


def fmt_mfu(row: dict) -> str:
    """``MFU 23.4% of the bf16 1-thread peak (19.0% of the best precision's)``."""
    if row["mfu"] is None:
        return "MFU: peak not measured"
    return (f"MFU on this CPU {100 * row['mfu']:.1f}% of the {NAMES[row['precision']]} {row['threads']}-thread "
            f"GEMM peak "
            f"({100 * row['mfu_of_best_precision']:.1f}% of the faster precision's), "
            f"{row['model_flops_per_s'] / 1e9:.1f} model GFLOP/s")

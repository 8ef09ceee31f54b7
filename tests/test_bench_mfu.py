"""benchmarks/mfu.py: MFU on this CPU from measured peaks (the arithmetic, not the timings)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_mfu", Path(__file__).resolve().parents[1] / "benchmarks" / "mfu.py")
mfu = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mfu)

PEAK = {"shape": (8, 8, 8), "per_shape": {}, "dtype": "float32", "threads": 1}


def test_best_peaks_keeps_the_fastest_measurement_per_key():
    before = {"no_1t": {**PEAK, "flops_per_s": 10.0}, "bf16_1t": {**PEAK, "flops_per_s": 30.0}}
    after = {"no_1t": {**PEAK, "flops_per_s": 12.0}, "bf16_1t": {**PEAK, "flops_per_s": 20.0}}
    best = mfu.best_peaks(before, after)
    assert best["no_1t"]["flops_per_s"] == 12.0 and best["bf16_1t"]["flops_per_s"] == 30.0


def test_mfu_row_is_flops_over_the_runs_precision_and_threads_peak():
    peaks = {"no_1t": {**PEAK, "flops_per_s": 10.0}, "bf16_1t": {**PEAK, "flops_per_s": 40.0},
             "no_2t": {**PEAK, "flops_per_s": 20.0}}
    row = mfu.mfu_row(5.0, peaks, "no", 1)
    assert row["mfu"] == pytest.approx(0.5) and row["mfu_of_best_precision"] == pytest.approx(0.125)
    assert mfu.mfu_row(5.0, peaks, "bf16", 2)["mfu"] is None  # that peak was not measured
    assert "50.0% of the fp32 1-thread GEMM peak" in mfu.fmt_mfu(row)


def test_measure_peaks_times_each_precision_and_thread_count():
    peaks = mfu.measure_peaks(mfu.step_shapes(16, 8, 32, 64), threads=[1], repeat=1)
    assert set(peaks) == {"no_1t", "bf16_1t"} and all(p["flops_per_s"] > 0 for p in peaks.values())

"""``train.mixed_precision: auto``: the faster of fp32 and bf16 for this run's model on this machine, timed once.

Which precision is faster on a CPU depends on the CPU: bf16 matmuls are fast where the CPU has bf16 instructions and
oneDNN uses them well, and slower than fp32 elsewhere (the casts and emulation then cost more than they save). A
recipe cannot know which CPU it will meet, so ``auto`` measures: it trains a few updates of the recipe itself in each
precision (``python -m seqba.train`` subprocesses into a temporary folder, ``rounds`` interleaved rounds, the median
of the logged throughput after ``warmup`` updates), keeps the faster, logs the figures and caches the choice per
machine and model shape (``$SEQBA_PRECISION_CACHE``, default ``~/.cache/seqba/precision.json``), so the probe is paid
once. On a CUDA GPU ``auto`` is bf16 where the GPU supports it, else fp16 (with Accelerate's loss scaler); no probe.

The probe runs the same recipe as the run (its config as loaded, written to a temporary YAML), with
``train.max_updates`` set to ``warmup + measured`` updates and nothing saved; the run then starts from scratch with
the chosen precision. A multi-process launch does not probe (its ranks could disagree): it uses the cached choice, or
refuses with one line asking for one single-process run first (or an explicit precision).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from seqba.errors import ConfigError

__all__ = ["resolve_precision", "machine_key", "probe_precision", "cpu_model"]

CANDIDATES = ("no", "bf16")
RATES = ("tokens_per_s", "words_per_s", "images_per_s")  # a task's throughput key in metrics.jsonl


def cache_path() -> Path:
    """Where choices are cached: ``$SEQBA_PRECISION_CACHE`` or ``~/.cache/seqba/precision.json``."""
    return Path(os.environ.get("SEQBA_PRECISION_CACHE", Path.home() / ".cache" / "seqba" / "precision.json"))


def cpu_model() -> str:
    """This machine's CPU model name (``/proc/cpuinfo``'s ``model name``, e.g. ``Intel(R) Xeon(R) Processor``; else
    :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(config: dict) -> str:
    """What a cached choice depends on: the CPU model, torch's version and CPU capability, the thread count, and
    the run's task, model and batch sections (16 hex digits of sha256)."""
    blob = json.dumps({"cpu": cpu_model(), "torch": torch.__version__,
                       "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                       "task": config.get("task"), "model": config.get("model"), "data": config.get("data"),
                       "ba": config.get("ba")}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    path = cache_path()
    cache = _read_cache()
    cache[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _throughput(config: dict, precision: str, work: Path, warmup: int, measured: int) -> float:
    """Median logged throughput (units/s) after ``warmup`` updates of the recipe ``config`` in ``precision``."""
    recipe = work / "probe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    out = work / f"run-{precision}"
    overrides = [f"output_dir={out}", f"train.mixed_precision={precision}", f"train.max_updates={warmup + measured}",
                 "train.max_epochs=0", "train.log_interval=1", "train.validate_interval_updates=0",
                 "train.save_interval_updates=0", "train.progress_bar=false", "train.grad_stats_interval=0",
                 "train.log_with=none", "train.resume=auto"]
    proc = subprocess.run([sys.executable, "-m", "seqba.train", str(recipe), *overrides], capture_output=True,
                          text=True, env={**os.environ, "SEQBA_PRECISION_PROBE": "1"})
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
        raise ConfigError(f"train.mixed_precision=auto: timing {precision} failed: {last}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r.get("step", 0) > warmup and any(k in r for k in RATES)]
    rate = next(k for k in RATES if k in windows[0])
    for path in sorted(out.rglob("*"), reverse=True):  # the next round starts afresh
        path.unlink() if path.is_file() else path.rmdir()
    out.rmdir()
    return statistics.median(r[rate] for r in windows)


def probe_precision(config: dict, rounds: int = 2, warmup: int = 3, measured: int = 4) -> dict:
    """Time :data:`CANDIDATES` on ``config`` (a loaded recipe as a dict), interleaved over ``rounds``.

    Returns:
        ``{"choice", "rates": {precision: [units/s per round]}, "bf16_over_fp32": median of per-round ratios}``.

    Raises:
        ConfigError: a probe run failed (its last error line quoted).
    """
    rates: dict[str, list[float]] = {p: [] for p in CANDIDATES}
    with tempfile.TemporaryDirectory(prefix="seqba-precision-") as work:
        for _ in range(rounds):
            for precision in CANDIDATES:
                rates[precision].append(_throughput(config, precision, Path(work), warmup, measured))
    ratio = statistics.median(b / f for b, f in zip(rates["bf16"], rates["no"]))
    return {"choice": "bf16" if ratio > 1.0 else "no", "rates": rates, "bf16_over_fp32": ratio}


def resolve_precision(requested: str, config: dict, num_processes: int = 1) -> tuple[str, str]:
    """The precision a run uses: ``requested`` unless it is ``auto`` (see the module docstring).

    Args:
        requested: ``train.mixed_precision``.
        config: the run's config as a dict (``seqba.config.to_dict``): what the probe trains and the cache key reads.
        num_processes: processes of the launch (only a single process probes).

    Returns:
        ``(precision for Accelerate, a sentence saying how it was chosen)``.

    Raises:
        ConfigError: ``auto`` in a multi-process launch with nothing cached for this machine and model, or a
            failed probe.
    """
    if requested != "auto":
        return requested, "as the recipe says"
    if torch.cuda.is_available():
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return choice, "auto on a CUDA GPU"
    key = machine_key(config)
    cached = _read_cache().get(key)
    if cached is not None:
        return cached["choice"], (f"auto, timed before on this machine and model: bf16/fp32 throughput "
                                  f"{cached['bf16_over_fp32']:.2f} ({cache_path()})")
    if num_processes > 1 or os.environ.get("SEQBA_PRECISION_PROBE"):
        raise ConfigError("train.mixed_precision=auto has not been timed for this model on this machine: run it "
                          "once with one process (it times fp32 and bf16 and caches the faster), or set "
                          "train.mixed_precision to no or bf16")
    result = probe_precision(config)
    _write_cache(key, {**result, "cpu": cpu_model(), "torch": torch.__version__})
    return result["choice"], (f"auto, timed now: bf16/fp32 throughput {result['bf16_over_fp32']:.2f}, median of "
                              f"{len(result['rates']['no'])} interleaved rounds (cached in {cache_path()})")

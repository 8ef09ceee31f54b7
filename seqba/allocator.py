"""glibc malloc tuning for the entry points: keep freed memory in the process instead of returning it to the OS.

A training step on the CPU allocates and frees the same large activation and gradient buffers (megabytes each)
every step. glibc's defaults serve such requests with ``mmap`` (above a dynamic threshold that starts at 128 KiB)
and give freed memory back with ``munmap``/``brk`` trimming once more than 128 KiB is free at the top of the
heap, so each step pays for fresh zero-filled pages again (page faults and kernel zeroing). Two settings stop
that, as the environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` do (``man 3 mallopt``):

* ``mallopt(M_MMAP_MAX, 0)``: never serve a request with ``mmap``; large blocks come from the heap and are
  reused after ``free``;
* ``mallopt(M_TRIM_THRESHOLD, -1)``: never trim the heap top. glibc converts the int to ``size_t``, so -1 is the
  largest threshold (the env variable's 1e11 does not fit mallopt's int); setting it also turns off the dynamic
  mmap threshold.

The constants are glibc's ``malloc.h`` (``M_TRIM_THRESHOLD -1``, ``M_MMAP_MAX -4``). The cost: the process's
resident memory stays at its peak until it exits (no trimming), which suits a training or evaluation process.

``benchmarks/bench_train.py --malloc-compare`` measures training throughput and peak memory under glibc's
defaults, this function, the environment variables, and preloaded tcmalloc/jemalloc; the figures are in README.md
(Benchmarks) and ``benchmarks/results/malloc.json``.

Usage (what ``python -m seqba.train`` / ``python -m seqba.eval`` do first)::

    from seqba.allocator import configure_malloc
    configure_malloc()          # {'applied': True, ...} on Linux/glibc; a no-op elsewhere

``SEQBA_MALLOC=default`` in the environment turns it off (glibc's defaults, or whatever ``MALLOC_*_``
variables or an ``LD_PRELOAD``-ed allocator set). Explicit ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_``
variables also win: the function then leaves glibc alone.
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["configure_malloc", "M_TRIM_THRESHOLD", "M_MMAP_MAX", "ENV_SWITCH"]

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_MAX = -4  # glibc malloc.h
ENV_SWITCH = "SEQBA_MALLOC"
_MODES = ("tuned", "default")
# (name, mallopt parameter, value): applied in this order
_SETTINGS = (("M_MMAP_MAX", M_MMAP_MAX, 0), ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, -1))
_USER_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def _result(applied: bool, reason: str, settings: dict[str, int] | None = None) -> dict:
    return {"applied": applied, "reason": reason, "settings": settings or {}}


def configure_malloc(enabled: bool = True) -> dict:
    """Apply ``M_MMAP_MAX=0`` and ``M_TRIM_THRESHOLD=-1`` (no trimming) to this process's glibc malloc.

    Idempotent: calling it again sets the same values and returns the same result. It never undoes settings:
    ``enabled=False`` (or ``SEQBA_MALLOC=default``) only leaves malloc as it is.

    Args:
        enabled: ``False`` skips the call (for a ``--default-malloc`` style switch in code).

    Returns:
        ``{"applied": bool, "reason": str, "settings": {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}}``; ``settings``
        lists what was set (empty when nothing was), ``reason`` says why or why not, e.g. ``"glibc 2.36: mallopt"``,
        ``"SEQBA_MALLOC=default"``, ``"not glibc (Darwin)"``.

    Raises:
        ValueError: for an ``SEQBA_MALLOC`` value other than ``tuned`` or ``default``.
    """
    mode = os.environ.get(ENV_SWITCH, "tuned").strip().lower() or "tuned"
    if mode not in _MODES:
        raise ValueError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r}: expected one of {', '.join(_MODES)}")
    if not enabled:
        return _result(False, "disabled by the caller")
    if mode == "default":
        return _result(False, f"{ENV_SWITCH}=default")
    user = [name for name in _USER_VARS if name in os.environ]
    if user:
        return _result(False, f"left to the environment ({', '.join(user)} set)")
    libc, version = platform.libc_ver()
    if platform.system() != "Linux" or libc != "glibc":
        return _result(False, f"not glibc ({platform.system()} {libc or 'unknown libc'})")
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {}
    for name, param, value in _SETTINGS:
        if mallopt(param, value) != 1:  # glibc returns 1 on success, 0 on error
            return _result(False, f"glibc {version}: mallopt({name}, {value}) failed", settings)
        settings[name] = value
    return _result(True, f"glibc {version}: mallopt", settings)

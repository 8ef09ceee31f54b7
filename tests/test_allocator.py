"""configure_malloc: return values, idempotence, the env switch, and (in fresh processes) glibc's observed behaviour.

The behaviour check allocates one 64 MiB block with ``malloc`` through ctypes and reads ``mallinfo2()``: with
glibc's defaults the block is ``mmap``-ed (``hblks`` grows by one) and its ``free`` unmaps it; after
``configure_malloc()`` it comes from the heap (``hblks`` unchanged) and stays there after ``free`` (the heap,
``arena``, is not trimmed below 64 MiB).
"""
import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest

from seqba import allocator
from seqba.allocator import configure_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

PROBE = r"""
import ctypes, json, sys
from seqba.allocator import configure_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
result = configure_malloc()
before = libc.mallinfo2()
size = 64 << 20
ptr = libc.malloc(size)
during = libc.mallinfo2()
libc.free(ptr)
after = libc.mallinfo2()
print(json.dumps({"result": result, "new_mmapped": during.hblks - before.hblks, "arena_during": during.arena,
                  "arena_after": after.arena, "size": size}))
"""


def probe(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("SEQBA_MALLOC", "MALLOC_MMAP_MAX_",
                                                                 "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=environ | env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("SEQBA_MALLOC", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_result_and_idempotence(clean_env):
    first = configure_malloc()
    assert set(first) == {"applied", "reason", "settings"}
    if GLIBC:
        assert first["applied"] and first["reason"].startswith("glibc")
        assert first["settings"] == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
    else:
        assert not first["applied"] and first["settings"] == {}
    assert configure_malloc() == first


def test_switches_leave_malloc_alone(clean_env):
    assert configure_malloc(enabled=False) == {"applied": False, "reason": "disabled by the caller", "settings": {}}
    clean_env.setenv("SEQBA_MALLOC", "default")
    assert configure_malloc() == {"applied": False, "reason": "SEQBA_MALLOC=default", "settings": {}}
    clean_env.setenv("SEQBA_MALLOC", "tuned")
    clean_env.setenv("MALLOC_MMAP_MAX_", "0")
    result = configure_malloc()
    assert not result["applied"] and "MALLOC_MMAP_MAX_" in result["reason"]


def test_rejects_unknown_mode(clean_env):
    clean_env.setenv("SEQBA_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="SEQBA_MALLOC='jemalloc'.*tuned, default"):
        configure_malloc()


def test_constants_are_glibcs():
    assert (allocator.M_TRIM_THRESHOLD, allocator.M_MMAP_MAX) == (-1, -4)


@pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_glibc_behaviour_in_a_fresh_process():
    default = probe(SEQBA_MALLOC="default")
    assert not default["result"]["applied"]
    assert default["new_mmapped"] == 1  # the 64 MiB block was mmap-ed
    tuned = probe()
    assert tuned["result"]["applied"]
    assert tuned["new_mmapped"] == 0  # from the heap ...
    assert tuned["arena_during"] >= tuned["size"]
    assert tuned["arena_after"] >= tuned["size"]  # ... and kept there after free (no trim)

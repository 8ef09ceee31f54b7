"""One process at a time: an advisory ``fcntl`` lock on a file (a run directory's ``.lock``, a corpus's build lock).

The kernel releases the lock when its holder dies (a SIGKILL included), so a lock file left by a killed run is
stale by construction: the next run takes it. The file keeps the holder's pid, host and start time, which the
error of a second run quotes. On systems without ``fcntl`` (Windows) no lock is taken.

A ``flock`` belongs to the open file, and a forked child (a ``DataLoader`` worker, a ``multiprocessing`` pool
process) shares the parent's open files: after a SIGKILL of the parent, its orphaned workers would keep the run
locked until they notice and exit (seconds). Forked children therefore close their copy of every held lock's
descriptor right after the fork (``os.register_at_fork``), so only the process that took the lock holds it.
``subprocess`` children never see it (the descriptor is close-on-exec).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from seqba.errors import RunLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunLock"]

_HELD: set[int] = set()  # descriptors of the locks this process holds (closed in forked children)


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)  # drops the child's reference to the open file; the parent's lock stays
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """Exclusive lock on a directory, held until :meth:`release` or the process ends.

    Usage::

        lock = RunLock(output_dir / ".lock").acquire()   # raises RunLockedError naming the holder
        ...
        lock.release()

    Args:
        path: the lock file (created if missing; its folder too).
        what: how the error names the protected thing, e.g. ``"run directory runs/x"``.

    Raises:
        RunLockedError: from :meth:`acquire` (non-blocking) when another live process holds the lock; the message
            gives its pid, host and start time.
    """

    def __init__(self, path: str | os.PathLike, what: str | None = None) -> None:
        self.path = Path(path)
        self.what = what or f"run directory {self.path.parent}"
        self._fd: int | None = None

    def acquire(self, blocking: bool = False) -> "RunLock":
        """Take the lock; ``blocking=True`` waits for the holder instead of raising."""
        if fcntl is None or self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"{self.what} is in use by {holder}; wait for it to finish, stop it, or choose "
                                 "another output_dir") from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        _HELD.add(fd)
        return self

    @staticmethod
    def _read_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
        except (ValueError, KeyError, OSError):
            return "another process"

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""One (arm, seed) of a study: train it with ``seqba.train``, evaluate it with ``seqba.eval``, skip what is done.

The same code path as a user's own run: each step is a subprocess ``python -m seqba.train RECIPE overrides...``
(or ``python -m accelerate.commands.launch LAUNCH_ARGS -m seqba.train ...``, i.e. ``accelerate launch``) and
``python -m seqba.eval --checkpoint ... --metrics-out ...``. Files in the run directory, besides the run's own::

    train.log            stdout and stderr of seqba.train (appended on every attempt)
    train.done           {"wall_seconds", "finished", "machine", "threads"}: written after seqba.train exited 0 -> skipped
    eval.NAME.json       seqba.eval's metrics for test set NAME (renamed into place on success) -> eval skipped
    eval.NAME.log        its output;  hyp.NAME.txt: per-example outputs (tasks with TaskSpec.outputs_option)

A killed run resumes itself (``train.resume=auto`` is part of every train command). Children get
``PR_SET_PDEATHSIG`` (Linux), so killing the study kills its training process too and releases the run lock.
"""
from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqba.errors import SeqbaError

__all__ = ["RunSpec", "RunFailed", "execute_run", "is_trained", "is_done", "read_done"]


class RunFailed(SeqbaError):
    """A training or evaluation subprocess exited non-zero (the message quotes its last error line and log)."""


@dataclass
class RunSpec:
    """What to run for one (arm, seed); plain data, so that submitit can pickle it.

    Attributes:
        train_args: arguments of ``seqba.train``: the recipe, then every ``key=value`` override.
        launch_args: ``accelerate launch`` arguments (empty: one ``python -m seqba.train`` process).
        evals: ``(set name, seqba.eval arguments without --metrics-out)`` per test set.
        pending: the updates are still to be set from measured runs (``equal_time``).
        threads: CPU threads of its processes (``OMP_NUM_THREADS``), e.g. the machine's cores / ``--jobs``; None:
            the environment's (torch's default: every core).
    """

    arm: str
    seed: int
    run_dir: str
    train_args: list[str]
    launch_args: list[str] = field(default_factory=list)
    evals: list[tuple[str, list[str]]] = field(default_factory=list)
    pending: bool = False
    threads: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


def is_trained(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "train.done").is_file()


def is_done(spec: RunSpec) -> bool:
    """Trained and evaluated on every test set."""
    return is_trained(spec.run_dir) and all((spec.path / f"eval.{name}.json").is_file() for name, _ in spec.evals)


def read_done(run_dir: str | Path) -> dict:
    """``train.done`` of a run ({} when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "train.done").read_text())
    except (OSError, ValueError):
        return {}


def this_machine() -> str:
    """What a run's seconds were measured on: ``"<CPU model> x<cores>"``, plus ``" + <GPU name>"`` when CUDA is
    available (e.g. ``"Intel(R) Xeon(R) Processor x2"``). Written into ``train.done`` by the process that finished
    the training, so that a study whose runs landed on different machines says so (training seconds, and the
    float rounding of a run, depend on it)."""
    import torch

    from seqba.precision import cpu_model

    name = f"{cpu_model()} x{os.cpu_count()}"
    return name + (f" + {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")


def _env_threads() -> int | None:
    """``OMP_NUM_THREADS`` of this process as an int, None when unset or not a number."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _run(command: list[str], log: Path, threads: int | None = None) -> None:
    """Run ``command`` with output appended to ``log`` (``OMP_NUM_THREADS=threads`` unless None); raise
    :class:`RunFailed` with its last ``error:`` line."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log.open("a") as f:
        prefix = "" if threads is None else f"OMP_NUM_THREADS={threads} "
        f.write(f"$ {prefix}{shlex.join(command)}\n")  # as a shell would take it back (a path with " #" stays whole)
        f.flush()
        rc = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if rc != 0:
        lines = log.read_text(errors="replace").splitlines()
        last = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise RunFailed(f"{command[2] if len(command) > 2 else command[0]} exited with status {rc}: "
                        f"{last.strip()} (log: {log})")


def execute_run(spec: RunSpec) -> dict:
    """Train ``spec`` unless ``train.done`` exists, then evaluate each test set whose ``eval.NAME.json`` is missing.

    Returns:
        ``{"wall_seconds": seconds of this call}``.

    Raises:
        RunFailed: a subprocess failed (the run directory keeps what it wrote; rerunning resumes).
    """
    start = time.perf_counter()
    spec.path.mkdir(parents=True, exist_ok=True)
    if not is_trained(spec.path):
        launcher = ([sys.executable, "-m", "accelerate.commands.launch", *spec.launch_args] if spec.launch_args
                    else [sys.executable])
        _run([*launcher, "-m", "seqba.train", *spec.train_args], spec.path / "train.log", spec.threads)
        done = {"wall_seconds": round(time.perf_counter() - start, 3), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": this_machine(), "threads": spec.threads or _env_threads()}
        tmp = spec.path / ".train.done.tmp"
        tmp.write_text(json.dumps(done) + "\n")
        os.replace(tmp, spec.path / "train.done")
    for name, args in spec.evals:
        result = spec.path / f"eval.{name}.json"
        if result.is_file():
            continue
        tmp = spec.path / f".eval.{name}.json.tmp"
        _run([sys.executable, "-m", "seqba.eval", *args, "--metrics-out", str(tmp)], spec.path / f"eval.{name}.log",
             spec.threads)
        os.replace(tmp, result)
    return {"wall_seconds": time.perf_counter() - start}

"""Launchers: run a study's pending (arm, seed) runs here (one after another, or ``--jobs N`` at a time), or as Slurm
jobs through submitit.

Both skip what is done (:func:`seqba.compare.runs.is_done`), run the ``equal_time`` arm only after the ``ba`` and
``fixed_steps`` runs it is timed from, and print one progress line per run::

    [3/9] fixed_samples seed 1: start (ETA 12.4 min)
    [3/9] fixed_samples seed 1: done in 251.0 s

The ETA is the mean wall time of the finished runs of each remaining run's arm (of any arm while none of that arm
has finished), summed over the remaining runs; under Slurm, jobs run in parallel and the ETA is an upper bound.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shlex
import threading
import time
from typing import Any, Callable

import yaml

from seqba.compare.arms import timed_arm
from seqba.compare.runs import RunFailed, RunSpec, execute_run, is_done, read_done
from seqba.compare.study import Study, resolve_pending
from seqba.errors import ConfigError

__all__ = ["Progress", "threads_per_run", "run_local", "run_submitit", "parse_executor_params"]


def threads_per_run(jobs: int) -> int | None:
    """CPU threads for each of ``jobs`` runs sharing this machine: its usable cores // ``jobs`` (at least 1); None
    (the environment's, torch's default of every core) for one run at a time or when ``OMP_NUM_THREADS`` is set.

    Without it, ``--jobs 2`` on 2 cores starts two runs of 2 OpenMP threads each: four busy threads on two cores,
    whose spinning barriers slow each run by a varying factor, so their training seconds (and the updates an
    ``equal_time`` arm is given from them) measure the contention, not the arm.
    """
    if jobs <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


class Progress:
    """Numbered progress lines with an ETA from finished runs' wall times (``train.done`` of the study's runs)."""

    def __init__(self, runs: list[RunSpec], echo: Callable[[str], None] = print) -> None:
        self.runs, self.echo = runs, echo
        self.index = {id(r): i + 1 for i, r in enumerate(runs)}

    def _walls(self) -> dict[str, list[float]]:
        walls: dict[str, list[float]] = {}
        for r in self.runs:
            wall = read_done(r.run_dir).get("wall_seconds")
            if wall is not None:
                walls.setdefault(r.arm, []).append(float(wall))
        return walls

    def eta(self) -> str:
        walls = self._walls()
        every = [w for ws in walls.values() for w in ws]
        if not every:
            return "ETA unknown until a run finishes"
        left = [r for r in self.runs if not is_done(r)]
        seconds = sum(sum(walls.get(r.arm, every)) / len(walls.get(r.arm, every)) for r in left)
        return f"ETA {seconds / 60:.1f} min"

    def line(self, run: RunSpec, what: str) -> None:
        self.echo(f"[{self.index[id(run)]}/{len(self.runs)}] {run.arm} seed {run.seed}: {what}")


def run_local(study: Study, runs: list[RunSpec], echo: Callable[[str], None] = print, jobs: int = 1) -> list[str]:
    """Run every unfinished run here, ``jobs`` at a time, in this process's children; return the failures (one
    line each).

    With ``jobs`` > 1 the runs share this machine (its cores, or its one GPU), each with :func:`threads_per_run`
    CPU threads: a pending run (``equal_time``) starts
    once the same seed's ``ba`` (for ``equal_time_X``: X) and ``fixed_steps`` runs have ended, and its updates are
    measured from runs that shared the machine the same way, so training seconds are comparable only between runs
    made under the same ``jobs``. Runs start in ``runs`` order (seeds outer: whole seeds finish first).

    Raises:
        ValueError: ``jobs`` < 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    progress, failures, lock = Progress(runs, echo), [], threading.Lock()
    threads = threads_per_run(jobs)
    todo = []
    for run in runs:
        if is_done(run):
            progress.line(run, "done earlier, skipped")
        else:
            todo.append(run)

    def one(run: RunSpec) -> None:
        with lock:
            progress.line(run, f"start ({progress.eta()}) -> {run.run_dir}")
        try:
            result = execute_run(dataclasses.replace(resolve_pending(study, run), threads=threads))
        except (RunFailed, ValueError) as err:
            with lock:
                failures.append(f"{run.arm} seed {run.seed}: {err}")
                progress.line(run, f"FAILED: {err}")
            return
        with lock:
            progress.line(run, f"done in {result['wall_seconds']:.1f} s")

    def ready(run: RunSpec, running: list[RunSpec]) -> bool:
        if not run.pending:
            return True
        unsettled = {(r.arm, r.seed) for r in (*todo, *running)}
        return not ({(timed_arm(run.arm), run.seed), ("fixed_steps", run.seed)} & unsettled)

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[concurrent.futures.Future, RunSpec] = {}
        while todo or running:
            for run in [r for r in todo if ready(r, list(running.values()))]:
                if len(running) >= jobs:
                    break
                todo.remove(run)
                running[pool.submit(one, run)] = run
            if not running:  # only pending runs whose inputs never ran: let them fail with their own message
                run = todo.pop(0)
                running[pool.submit(one, run)] = run
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                future.result()
                del running[future]
    return failures


def parse_executor_params(text: str) -> dict[str, Any]:
    """``"timeout_min=600 slurm_partition=gpu gpus_per_node=8"`` -> keyword arguments of submitit's
    ``update_parameters`` (values read as YAML scalars).

    Raises:
        ConfigError: an item without ``=``.
    """
    params = {}
    for item in shlex.split(text.replace(",", " ")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-params {item!r}: expected key=value (e.g. timeout_min=600)")
        params[key] = yaml.safe_load(value)
    return params


def run_submitit(study: Study, runs: list[RunSpec], cluster: str = "slurm", params: dict[str, Any] | None = None,
                 echo: Callable[[str], None] = print) -> list[str]:
    """Submit every unfinished run as one job (``seqba.compare.runs.execute_run``) and wait for all.

    Two waves: the runs that need no measurement, then the ``equal_time`` runs, resolved from the first wave.
    Jobs log under ``OUT/submitit/``. ``cluster`` is submitit's (``slurm``; ``local`` runs the jobs as local
    processes, as the tests do). Returns the failures, one line each.

    Raises:
        ConfigError: submitit is not installed (``pip install 'seqba[slurm]'``) or rejects ``params``.
    """
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'seqba[slurm]'") from None
    executor = submitit.AutoExecutor(folder=f"{study.out}/submitit/%j", cluster=cluster)
    try:
        executor.update_parameters(**{"timeout_min": 60 * 24, "name": "seqba-compare", **(params or {})})
    except (AssertionError, ValueError, TypeError) as err:
        raise ConfigError(f"--slurm-params: {err}") from None
    progress, failures = Progress(runs, echo), []
    for wave in ([r for r in runs if not r.pending], [r for r in runs if r.pending]):
        jobs = []
        for run in wave:
            if is_done(run):
                progress.line(run, "done earlier, skipped")
                continue
            try:
                job = executor.submit(execute_run, resolve_pending(study, run))
            except ValueError as err:
                failures.append(f"{run.arm} seed {run.seed}: {err}")
                continue
            progress.line(run, f"submitted as job {job.job_id} ({progress.eta()})")
            jobs.append((run, job))
        for run, job in jobs:
            start = time.perf_counter()
            try:
                result = job.result()
            except Exception as err:  # noqa: BLE001 - submitit re-raises the job's error wrapped in its own
                message = str(err).strip().splitlines()
                failures.append(f"{run.arm} seed {run.seed}: job {job.job_id} failed: "
                                f"{message[-1] if message else err}")
                progress.line(run, f"FAILED (job {job.job_id}; log in {study.out}/submitit/{job.job_id})")
                continue
            progress.line(run, f"done (job {job.job_id}, {result['wall_seconds']:.1f} s; waited "
                               f"{time.perf_counter() - start:.1f} s)")
    return failures

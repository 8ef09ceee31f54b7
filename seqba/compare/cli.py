"""``python -m seqba.compare RECIPE.yaml --arms fixed_steps,fixed_samples,ba --seeds 1,2,3 --out studies/NAME``.

Derives the arms from one BA recipe (:mod:`seqba.compare.arms`), prints them, trains and evaluates every
(arm, seed) through ``seqba.train`` / ``seqba.eval`` (:mod:`seqba.compare.runs`), here or as Slurm jobs
(:mod:`seqba.compare.launchers`), then writes ``results.csv``, ``table.md`` and ``curves.png`` into ``--out``.
Finished runs and evaluations are skipped, so rerunning a killed study resumes it; one lock per study folder.
A bad command line is one ``error:`` line with exit status 2; failed runs give status 1 after the report of
the others.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from seqba import config as config_lib
from seqba import eval as eval_cli
from seqba.compare.arms import BUILTIN, derive_arms, count_updates, parse_arm
from seqba.compare.curves import plot_study
from seqba.compare.launchers import parse_executor_params, run_local, run_submitit, threads_per_run
from seqba.compare.report import collect_rows, equal_time_counterparts, equal_time_verdict, format_table, write_csv
from seqba.compare.significance import BASELINE, study_pvalues
from seqba.compare.study import check_unchanged, make_study, parse_test_set, plan_runs, save_study
from seqba.errors import ConfigError, RunLockedError, SeqbaError, UsageError
from seqba.runlock import RunLock
from seqba.tasks import TASKS

__all__ = ["main", "build_parser", "write_report"]

_RESERVED = ("seed", "output_dir", "train.resume")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m seqba.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="the BA recipe (ba.repeats = M >= 2), e.g. recipes/transformer_multi30k_m4.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every arm")
    p.add_argument("--arms", default="fixed_steps,fixed_samples,ba",
                   help=f"comma-separated arms: {', '.join(BUILTIN)}, or names given with --arm")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--out", required=True, help="study folder, e.g. studies/multi30k")
    p.add_argument("--arm", action="append", default=[], metavar="NAME:key=value,...",
                   help="a custom arm: the recipe plus these overrides (e.g. ba_symkl:ba.consistency=sym_kl,"
                        "ba.consistency_alpha=10); list NAME in --arms")
    p.add_argument("--test-set", action="append", default=[], metavar="NAME=SRC,REF",
                   help="also evaluate on these raw source/reference files (tasks whose spec has test_set_options)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: one run after another here (--jobs at a time); slurm: one submitit job per run")
    p.add_argument("--jobs", type=int, default=1,
                   help="local launcher: runs at a time on this machine (default 1). They share its cores or its "
                        "GPU, so training seconds (and equal_time's updates) are comparable only between runs made "
                        "under the same --jobs. Each run gets cores // jobs CPU threads (OMP_NUM_THREADS) unless "
                        "OMP_NUM_THREADS is set")
    p.add_argument("--launch-args", default="",
                   help="train each run with `accelerate launch LAUNCH_ARGS -m seqba.train` "
                        "(e.g. \"--multi_gpu --num_processes 8\")")
    p.add_argument("--eval-args", default="", help="extra seqba.eval options, e.g. \"--beam 4 --max-tokens 8000\"")
    p.add_argument("--slurm-params", default="",
                   help="submitit parameters, e.g. \"timeout_min=1440 slurm_partition=gpu gpus_per_node=8\"")
    p.add_argument("--submitit-cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="submitit executor of --launcher slurm (local: jobs as local processes, for testing)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved arms and runs, train nothing (a task that prepares its corpus on first "
                        "use still prepares it: an epoch's updates are counted from it)")
    p.add_argument("--report-only", action="store_true", help="rewrite results.csv, table.md, curves.png only")
    p.add_argument("--baseline", default=None,
                   help="the arm every arm's significance test is paired against, seed by seed (default "
                        "fixed_steps; e.g. --baseline ba --report-only: do forked arms differ from BA?); one of "
                        "--arms")
    return p


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: expected distinct integers >= 0")
    return seeds


def _num_processes(launch_args: list[str]) -> int | None:
    """``--num_processes N`` of the accelerate launch arguments (None when not given)."""
    match = re.search(r"--num[_-]processes[= ](\d+)", " ".join(launch_args))
    return int(match.group(1)) if match else None


def write_report(study, arms: list[str], echo=print, baseline: str = BASELINE) -> Path:
    """Write ``results.csv``, ``table.md`` and ``curves.png`` of the finished runs of ``arms`` (p-values against
    ``baseline``); return table.md."""
    out = Path(study.out)
    pvalues = study_pvalues(study, arms, baseline)
    rows = collect_rows(study, arms, pvalues, baseline)
    write_csv(rows, out / "results.csv")
    table = out / "table.md"
    vs_equal_time = {}  # each BA arm's p-values against its own equal-time arm
    for arm, counterpart in equal_time_counterparts(arms).items():
        against = pvalues if baseline == counterpart else study_pvalues(study, [arm, counterpart], counterpart)
        vs_equal_time.update({key: p for key, p in against.items() if key[1] == arm})
    verdict = equal_time_verdict(study, rows, arms, vs_equal_time)
    table.write_text(format_table(study, rows, arms, Path(study.recipe).stem, baseline)
                     + (f"\n{verdict}" if verdict else ""))
    plot_study(study, arms, out / "curves.png")
    echo(f"wrote {out / 'results.csv'} ({len(rows)} runs), {table}, {out / 'curves.png'}")
    return table


def _sets_reserved(override: str) -> bool:
    """Whether ``override`` sets a key compare sets per run, by its name (``train.resume=x``) or inside a section
    value (``train={resume: x}``), or replaces a section holding one (``train=null``)."""
    reserved = [tuple(key.split(".")) for key in _RESERVED]
    return any(leaf == key[:len(leaf)] for leaf in config_lib.override_keys(override) for key in reserved)


def _study(args: argparse.Namespace):
    """Check the command line, derive and print the arms; return (study, arm names)."""
    for override in args.overrides:
        if _sets_reserved(override):
            raise ConfigError(f"override {override!r}: compare sets seed, output_dir and train.resume per run")
    if args.baseline is not None and args.baseline not in [a.strip() for a in args.arms.split(",")]:
        raise ConfigError(f"--baseline {args.baseline}: not among --arms {args.arms!r}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be >= 1")
    if args.jobs > 1 and args.launcher != "local":
        raise ConfigError(f"--jobs {args.jobs} is for --launcher local; under slurm each run is its own job")
    names = [a.strip() for a in args.arms.split(",")]
    if not all(names):
        raise ConfigError(f"--arms {args.arms!r}: expected comma-separated arm names, e.g. fixed_steps,ba")
    seeds = _seeds(args.seeds)
    custom = [parse_arm(spec) for spec in args.arm]
    for arm in custom:
        reserved = [o for o in arm.overrides if _sets_reserved(o)]
        if reserved:
            raise ConfigError(f"--arm {arm.name}: override {reserved[0]!r}: compare sets seed, output_dir and "
                              "train.resume per run")
        if [a.name for a in custom].count(arm.name) > 1:
            raise ConfigError(f"--arm {arm.name} is defined twice")
        if arm.name not in names:
            raise ConfigError(f"--arm {arm.name} is defined but not listed in --arms {args.arms!r}")
    cfg = config_lib.load(args.recipe, args.overrides)
    eval_args = shlex.split(args.eval_args)
    try:
        eval_cli.check_args(eval_args, cfg.task)
    except UsageError as err:
        raise ConfigError(f"--eval-args {args.eval_args!r}: {err}") from None
    if args.report_only and not (Path(args.out) / "study.json").is_file():
        raise ConfigError(f"--report-only: no study at {args.out} (no study.json)")
    test_sets = [parse_test_set(spec) for spec in args.test_set]
    if test_sets and TASKS[cfg.task].test_set_options is None:
        families = ", ".join(name for name, spec in TASKS.items() if spec.test_set_options is not None)
        raise ConfigError(f"--test-set applies to {families}; {args.recipe} is {cfg.task} (its test split is used)")
    launch_args = shlex.split(args.launch_args)
    processes = _num_processes(launch_args)
    if launch_args and processes is None and cfg.train.max_epochs:
        raise ConfigError("--launch-args without --num_processes N: the updates of an epoch-based recipe depend "
                          "on the number of processes; add it, or set train.max_updates")
    arms = derive_arms(args.recipe, args.overrides, names, custom, processes or 1)
    study = make_study(args.out, args.recipe, args.overrides, arms, seeds, test_sets, launch_args, eval_args)
    for arm in arms:  # updates of one epoch of each arm, for epochs_seen (equal_time: as fixed_steps)
        source = "fixed_steps" if arm.pending else arm.name
        if source not in study.updates_per_epoch:
            seed = config_lib.format_override("seed", seeds[0])
            arm_cfg = config_lib.load(args.recipe, [*args.overrides, *study.arms[source], seed])
            study.updates_per_epoch[source] = count_updates(arm_cfg, processes or 1)[1]
        study.updates_per_epoch[arm.name] = study.updates_per_epoch[source]
    print(f"study {study.out}: {args.recipe} ({cfg.task}), seeds {','.join(map(str, seeds))}, test sets "
          f"{', '.join(t.name for t in study.test_sets)}, launcher {args.launcher}"
          + (f", {args.jobs} runs at a time" if args.jobs > 1 else "")
          + (f", {threads} CPU thread{'s' if threads > 1 else ''} each (OMP_NUM_THREADS)"
             if (threads := threads_per_run(args.jobs)) and args.launcher == "local" else ""))
    for arm in arms:
        print(f"  {arm.name:<14} {arm.note}; {study.updates_per_epoch[arm.name]} updates per epoch")
        print(f"  {'':<14} overrides: {shlex.join(arm.overrides) or '(none)'}")
    return study, names


def main(argv: list[str] | None = None) -> int:
    """``python -m seqba.compare``; returns the exit status."""
    args = build_parser().parse_intermixed_args(argv)
    try:
        study, names = _study(args)
    except (ConfigError, FileNotFoundError) as err:
        return _error(err, 2)
    if args.dry_run:
        for run in plan_runs(study, names):
            print(f"  {run.arm} seed {run.seed}: seqba.train {shlex.join(run.train_args)}")
        try:
            check_unchanged(plan_runs(study, names))
        except ConfigError as err:
            return _error(err, 2)
        return 0
    try:
        lock = RunLock(Path(study.out) / ".lock", what=f"study {args.out}").acquire()
    except RunLockedError as err:
        return _error(err, 1)
    failures: list[str] = []
    try:
        check_unchanged(plan_runs(study, names))
        save_study(study)
        if not args.report_only:
            runs = plan_runs(study, names)
            if args.launcher == "slurm":
                failures = run_submitit(study, runs, args.submitit_cluster, parse_executor_params(args.slurm_params))
            else:
                failures = run_local(study, runs, jobs=args.jobs)
        table = write_report(study, names, baseline=args.baseline or BASELINE)
        print(table.read_text())
    except (ConfigError, FileNotFoundError) as err:
        return _error(err, 2)
    except (SeqbaError, ValueError, OSError) as err:
        return _error(err, 1)
    finally:
        lock.release()
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _error(err: BaseException | str, status: int) -> int:
    if os.environ.get("SEQBA_TRACEBACK") == "1" and isinstance(err, BaseException):
        raise err
    print(f"error: {str(err).strip()}".replace("\n", " "), file=sys.stderr)
    return status

"""A study: the recipe, its arms, the seeds and the test sets, planned as one :class:`~seqba.compare.runs.RunSpec`
per (arm, seed) under ``OUT/runs/ARM/seed_S``, and recorded in ``OUT/study.json``.

``study.json`` keeps what the report needs without rerunning anything (task, arms and their overrides, updates
per epoch of each arm, test sets, references); a rerun with other overrides for an arm already in it is refused,
so a study folder never mixes two configurations of one arm.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from seqba import config as config_lib
from seqba.compare.arms import Arm, equal_time_overrides, timed_arm
from seqba.compare.records import read_records, summarise
from seqba.compare.runs import RunSpec
from seqba.errors import ConfigError
from seqba.tasks import TASKS
from seqba.tasks.spec import TaskSpec

__all__ = ["EvalSet", "Study", "check_unchanged", "outputs_file", "config_changes", "parse_test_set", "plan_runs",
           "resolve_pending", "save_study", "load_study"]

_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class EvalSet:
    """A test set: ``test`` is the recipe's own test split; others are raw ``src``/``ref`` files (families with
    ``TaskSpec.test_set_options``)."""

    name: str
    src: str | None = None
    ref: str | None = None


def parse_test_set(spec: str) -> EvalSet:
    """``NAME=SRC,REF`` -> :class:`EvalSet` with absolute paths.

    Raises:
        ConfigError: not of that form, a bad or reserved name (``test``), or a file that does not exist.
    """
    name, sep, files = spec.partition("=")
    paths = files.split(",")
    if not sep or len(paths) != 2 or not all(paths):
        raise ConfigError(f"--test-set {spec!r}: expected NAME=SRC,REF (two raw text files)")
    if not _SET_NAME.match(name) or name == "test":
        raise ConfigError(f"--test-set {spec!r}: NAME must be letters, digits, _ . - and not 'test' (the recipe's "
                          "test split)")
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"--test-set {spec!r}: file not found: {path}")
    return EvalSet(name, str(Path(paths[0]).resolve()), str(Path(paths[1]).resolve()))


@dataclass
class Study:
    """Everything that defines a study (saved as ``study.json``).

    Attributes:
        recipe: absolute path of the BA recipe; ``overrides``: the command line's ``key=value`` (every arm).
        arms: arm name -> its overrides; ``pending``: arms whose updates are set per seed (``equal_time``).
        updates_per_epoch: arm name -> updates of its first epoch (for ``epochs_seen``).
        test_sets: the recipe's ``test`` split first, then ``--test-set`` files.
    """

    out: str
    recipe: str
    task: str
    overrides: list[str]
    arms: dict[str, list[str]]
    seeds: list[int]
    test_sets: list[EvalSet]
    pending: list[str] = field(default_factory=list)
    updates_per_epoch: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    launch_args: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)

    def run_dir(self, arm: str, seed: int) -> Path:
        return Path(self.out) / "runs" / arm / f"seed_{seed}"

    @property
    def spec(self) -> TaskSpec:
        """The task family's spec (what the study asks about the task)."""
        return TASKS[self.task]

    @property
    def unit(self) -> str:
        """What the task's rows count in (``TaskSpec.batch_unit``)."""
        return self.spec.batch_unit


def save_study(study: Study) -> None:
    """Write ``OUT/study.json`` atomically.

    A study folder may be moved or copied with its recipe (a clone of the repository, a committed study whose runs
    keep their records but not their weights): the recipe is matched by file name, and :func:`check_unchanged`
    compares what each run was trained with against what the recipe resolves to now.

    Raises:
        ConfigError: an existing ``study.json`` gives another recipe file name, task or study overrides, or other
            overrides for an arm of the same name.
    """
    path = Path(study.out) / "study.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for key in ("recipe", "task", "overrides"):
            before, now = old.get(key), getattr(study, key)
            if key == "recipe" and before is not None:
                before, now = Path(before).name, Path(now).name
            if before != now:
                raise ConfigError(f"{study.out} is a study of {key} {old.get(key)!r}, not {getattr(study, key)!r}; "
                                  "use another --out")
        for arm, overrides in study.arms.items():
            if arm in old.get("arms", {}) and old["arms"][arm] != overrides:
                raise ConfigError(f"{study.out}: arm {arm} was run with {old['arms'][arm]}, now {overrides}; use "
                                  "another arm name or --out")
        if old.get("eval_args", []) != study.eval_args and _any_evaluated(study):
            before = " ".join(old.get("eval_args", []))
            raise ConfigError(f"{study.out}: runs were evaluated with --eval-args {before!r}"
                              f", now {' '.join(study.eval_args)!r}; use the same --eval-args or another --out")
        study.arms = {**old.get("arms", {}), **study.arms}
        study.updates_per_epoch = {**old.get("updates_per_epoch", {}), **study.updates_per_epoch}
    tmp = path.with_name(".study.json.tmp")
    tmp.write_text(json.dumps(asdict(study), indent=1) + "\n")
    os.replace(tmp, path)


def _any_evaluated(study: Study) -> bool:
    return any((Path(study.out) / "runs").glob("*/seed_*/eval.*.json"))


def load_study(out: str | Path) -> Study:
    """Read ``OUT/study.json`` (raises ``FileNotFoundError`` if absent)."""
    data = json.loads((Path(out) / "study.json").read_text())
    data.pop("prepared_dir", None)  # written by studies before the task spec held what significance reads
    data["test_sets"] = [EvalSet(**t) for t in data["test_sets"]]
    return Study(**data)


def make_study(out: str | Path, recipe: str | Path, overrides: list[str], arms: list[Arm], seeds: list[int],
               test_sets: list[EvalSet], launch_args: list[str] = (), eval_args: list[str] = ()) -> Study:
    """A :class:`Study` of ``arms`` (the recipe's ``test`` split is added first to ``test_sets``)."""
    cfg = config_lib.load(recipe, overrides)
    return Study(out=str(Path(out).resolve()), recipe=str(Path(recipe).resolve()), task=cfg.task,
                 overrides=list(overrides), arms={a.name: a.overrides for a in arms}, seeds=list(seeds),
                 test_sets=[EvalSet("test"), *test_sets], pending=[a.name for a in arms if a.pending],
                 notes={a.name: a.note for a in arms}, launch_args=list(launch_args), eval_args=list(eval_args))


def outputs_file(run_dir: str | Path, test_set: str) -> Path:
    """The per-example outputs (hypotheses) of a run on a test set, where ``TaskSpec.outputs_option`` writes them."""
    return Path(run_dir) / f"hyp.{test_set}.txt"


def _eval_args(study: Study, run_dir: Path, test: EvalSet) -> list[str]:
    """``seqba.eval`` arguments of one run on one test set: the family's ``report_checkpoint``, its raw test-set
    options for ``--test-set`` files, its outputs file."""
    spec = study.spec
    args = ["--checkpoint", str(run_dir / spec.report_checkpoint), *study.eval_args]
    if test.src:
        src, ref = spec.test_set_options
        args += [f"--{src.replace('_', '-')}", test.src, f"--{ref.replace('_', '-')}", test.ref]
    else:
        args += ["--split", "test"]
    if spec.outputs_option:
        args += [f"--{spec.outputs_option.replace('_', '-')}", str(outputs_file(run_dir, test.name))]
    return args


def _run_overrides(seed: int, run_dir: Path) -> list[str]:
    """The overrides compare sets on every run, written so that they read back exactly
    (:func:`seqba.config.format_override`: a folder ``/tmp/st #8`` stays that folder, not ``/tmp/st``)."""
    return [config_lib.format_override("seed", seed), config_lib.format_override("output_dir", str(run_dir)),
            "train.resume=auto", "train.progress_bar=false"]


def plan_runs(study: Study, arm_names: list[str]) -> list[RunSpec]:
    """One :class:`RunSpec` per (seed, arm), seeds outer (a partial study has whole seeds), pending arms last."""
    ordered = [a for a in arm_names if a not in study.pending] + [a for a in arm_names if a in study.pending]
    runs = []
    for seed in study.seeds:
        for arm in ordered:
            run_dir = study.run_dir(arm, seed)
            train_args = [study.recipe, *study.overrides, *study.arms[arm], *_run_overrides(seed, run_dir)]
            evals = [(t.name, _eval_args(study, run_dir, t)) for t in study.test_sets]
            runs.append(RunSpec(arm, seed, str(run_dir), train_args, list(study.launch_args), evals,
                                pending=arm in study.pending))
    return runs


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(spec: RunSpec) -> list[str]:
    """``key=old (now new)`` for every setting where the run's ``config.yaml`` (what it was trained with so far)
    differs from what its training arguments resolve to now (``output_dir`` aside: a study folder may be moved or
    copied); [] for a run not started yet or a pending one.

    Catches an edited recipe file between two invocations of a study (the arm overrides are checked by
    :func:`save_study`).
    """
    saved_file = spec.path / "config.yaml"
    if spec.pending or not saved_file.is_file():
        return []
    saved_tree = yaml.safe_load(saved_file.read_text())
    saved = _flatten(config_lib.to_dict(config_lib.build(config_lib.upgrade(saved_tree), str(saved_file))))
    now = _flatten(config_lib.to_dict(config_lib.load(spec.train_args[0], spec.train_args[1:])))
    return [f"{key}={saved.get(key)!r} (now {now.get(key)!r})" for key in sorted(set(saved) | set(now))
            if key != "output_dir" and saved.get(key) != now.get(key)]  # a study folder may move


def check_unchanged(runs: list[RunSpec]) -> None:
    """Refuse to skip, resume or report runs whose configuration has changed since they were trained.

    Raises:
        ConfigError: naming the first such run and up to three changed settings.
    """
    for spec in runs:
        changes = config_changes(spec)
        if changes:
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            raise ConfigError(f"{spec.run_dir} was trained with {', '.join(changes[:3])}{more}: the recipe or its "
                              "overrides changed since; restore them or use another --out")


def measured_seconds_per_update(study: Study, arm: str, seed: int) -> float:
    """Seconds per training update of a finished run, from the rates in its ``metrics.jsonl``."""
    return summarise(read_records(study.run_dir(arm, seed)), study.unit).seconds_per_update


def resolve_pending(study: Study, spec: RunSpec) -> RunSpec:
    """Set the updates of a pending (equal-time) run from the same seed's finished ``fixed_steps`` run and the arm it
    is timed from (:func:`~seqba.compare.arms.timed_arm`: ``ba`` for ``equal_time``).

    Deterministic (finished runs' records do not change), so a resumed study sets the same number again.

    Raises:
        ValueError: a measurement is missing (the ba or fixed_steps run did not log a training record).
    """
    if not spec.pending:
        return spec
    arm = Arm(spec.arm, study.arms[spec.arm], pending=True)
    cfg = config_lib.load(study.recipe, [*study.overrides, *arm.overrides])
    timed = measured_seconds_per_update(study, timed_arm(spec.arm), spec.seed)
    overrides = equal_time_overrides(arm, cfg, timed, measured_seconds_per_update(study, "fixed_steps", spec.seed))
    run_dir = study.run_dir(spec.arm, spec.seed)
    train_args = [study.recipe, *study.overrides, *overrides, *_run_overrides(spec.seed, run_dir)]
    return RunSpec(spec.arm, spec.seed, spec.run_dir, train_args, spec.launch_args, spec.evals, pending=False)

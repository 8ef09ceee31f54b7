"""The arms of a study, derived mechanically from ONE BA recipe (Hoffer et al. 2020, Table 2).

With M = ``ba.repeats`` and B = the batch key of the task (its ``TaskSpec.batch_key``: e.g. ``data.max_tokens``,
distinct tokens per batch, or ``data.batch_size``, distinct streams or images), U = the recipe's number of
updates::

    arm             M   batch   updates   what it tests
    ba              M   B       U         the recipe itself
    fixed_steps     1   B       U         "fixed #steps": same steps, M x fewer rows per step
    fixed_samples   1   M·B     U         "fixed #samples": same steps and rows, M x more distinct samples
    equal_time      1   B       U·r       same wall-clock as ba: r = (s/update of ba) / (s/update of fixed_steps)
    equal_time_X    1   B       U·r_X     same wall-clock as the listed BA arm X (e.g. ``equal_time_ba_fork_enc``)
    ba_fork_*       M   B       U         the task's forked arms (``TaskSpec.fork_arms``: ``ba.fork_layer = k``)
    NAME (custom)   the recipe plus ``--arm NAME:key=value,...``

Everything else (model, optimizer, learning-rate schedule in updates, augmentation, ghost batch size, dropout) is
the recipe's. Details of the derivation, each stated where it happens below:

* an epoch-based recipe (``train.max_epochs``) is converted to ``train.max_updates = U`` for the derived arms,
  with U counted by building the task's data (:func:`count_updates`), because M·B batches make epochs M times
  shorter; their validation then runs every ``updates of one ba epoch`` when the recipe validated per epoch;
* M=1 arms drop the consistency term (it needs M >= 2) and keep ``ba.sample_chunks`` per row:
  ``fixed_steps`` (B rows) uses ``max(1, sample_chunks // M)`` chunks, ``fixed_samples`` (M·B rows) the recipe's;
* ``equal_time`` runs the updates the ba arm's measured wall-clock buys at the fixed_steps arm's measured speed
  (seconds per update of the same seed, from the rates in their ``metrics.jsonl``). A callback stopping after N
  seconds would need a change to the loop and would not resume exactly; an update count does both. Step
  learning-rate milestones (``optim.lr_steps``) are scaled by r so the schedule keeps its shape.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from seqba import config as config_lib
from seqba.errors import ConfigError
from seqba.tasks import TASKS

__all__ = ["BUILTIN", "batch_key", "Arm", "derive_arms", "parse_arm", "count_updates", "equal_time_overrides",
           "timed_arm", "is_baseline", "BASELINES"]

#: The arms the command knows by name (and ``equal_time_X`` for any BA arm X of the study).
BUILTIN = ("fixed_steps", "fixed_samples", "ba", "equal_time")
#: The M = 1 arms: baselines, never a BA variant.
BASELINES = ("fixed_steps", "fixed_samples", "equal_time")


def timed_arm(name: str) -> str | None:
    """The arm whose measured wall-clock an equal-time arm matches: ``equal_time`` -> ``ba``, ``equal_time_X`` -> X;
    None for any other arm."""
    if name == "equal_time":
        return "ba"
    return name[len("equal_time_"):] or None if name.startswith("equal_time_") else None


def is_baseline(name: str) -> bool:
    """Whether ``name`` is an M = 1 arm (fixed_steps, fixed_samples, or an equal-time arm)."""
    return name in BASELINES or timed_arm(name) is not None


def batch_key(task: str) -> str:
    """The batch-size key of ``task`` (``TaskSpec.batch_key``): what ``fixed_samples`` multiplies by M.

    Raises:
        ConfigError: the family declares none (it has no compare arms).
    """
    key = TASKS[task].batch_key
    if key is None:
        raise ConfigError(f"task {task!r} declares no batch key (TaskSpec.batch_key): seqba.compare cannot derive "
                          "its arms")
    return key


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass
class Arm:
    """One arm: a name and the ``key=value`` overrides it adds to the study's (recipe + command-line) config.

    Attributes:
        overrides: applied after the study's overrides, before ``seed`` and ``output_dir``.
        note: one line for the printed plan.
        pending: equal-time arms only (:func:`timed_arm`): the updates are set per seed from measured runs
            (:func:`equal_time_overrides`), so ``overrides`` hold the rest.
    """

    name: str
    overrides: list[str] = field(default_factory=list)
    note: str = ""
    pending: bool = False


def split_overrides(text: str) -> list[str]:
    """``"a=1,b=[2,3]"`` -> ``["a=1", "b=[2,3]"]``: commas inside brackets or braces belong to the value."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_arm(spec: str) -> Arm:
    """``--arm NAME:key=value,...`` -> an :class:`Arm`.

    Example: ``ba_symkl:ba.consistency=sym_kl,ba.consistency_alpha=10`` (BA plus the consistency term).

    Raises:
        ConfigError: no ``:``, a bad or built-in name, no overrides, or an override without ``=``.
    """
    name, sep, rest = spec.partition(":")
    if not sep or not _NAME.match(name):
        raise ConfigError(f"--arm {spec!r}: expected NAME:key=value,... with NAME of letters, digits, _ . -")
    if name in BUILTIN:
        raise ConfigError(f"--arm {spec!r}: {name} is a built-in arm; choose another name")
    overrides = split_overrides(rest)
    bad = [o for o in overrides if "=" not in o]
    if not overrides or bad:
        raise ConfigError(f"--arm {spec!r}: expected key=value overrides after the colon"
                          + (f", got {bad[0]!r}" if bad else ""))
    return Arm(name, overrides, "the recipe + " + " ".join(overrides))


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


class _CountingProcess:
    """What a task's constructor uses of ``accelerate.Accelerator``: rank 0 of ``num_processes``, on the CPU.

    Used only to build the training data and count its batches (no model, no collectives).
    """

    device = torch.device("cpu")
    process_index = 0
    is_main_process = True

    def __init__(self, num_processes: int = 1) -> None:
        self.num_processes = num_processes

    def main_process_first(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def count_updates(cfg: config_lib.Config, num_processes: int = 1) -> tuple[int, int]:
    """Updates of run ``cfg`` as the trainer runs them, and the updates of its first epoch.

    Builds the task's training data (a task that prepares its corpus on first use does so now) on rank 0 of
    ``num_processes`` and sums ``ceil(batches of epoch e / train.update_freq)`` over the epochs (a task may have a
    different number of batches each epoch, e.g. variable BPTT windows); ``train.max_updates`` caps the total
    when set.

    Returns:
        ``(updates, updates_per_epoch)``; ``updates_per_epoch`` is that of epoch 0.
    """
    task = TASKS[cfg.task].task_class(cfg, _CountingProcess(num_processes))
    per_epoch = [math.ceil(task.num_batches(e) / cfg.train.update_freq) for e in range(max(cfg.train.max_epochs, 1))]
    total = sum(per_epoch) if cfg.train.max_epochs else math.inf
    if cfg.train.max_updates:
        total = min(total, cfg.train.max_updates)
    return int(total), per_epoch[0]


def _m1(cfg: config_lib.Config) -> list[str]:
    """Overrides that turn the BA recipe into M=1 (no consistency term: it compares copies)."""
    out = ["ba.repeats=1"]
    if cfg.ba.consistency != "none":
        out += ["ba.consistency=none", "ba.consistency_alpha=0.0"]
    return out


def derive_arms(recipe: str | Path, overrides: list[str], names: list[str], custom: list[Arm] = (),
                num_processes: int = 1,
                counter: Callable[[config_lib.Config, int], tuple[int, int]] = count_updates) -> list[Arm]:
    """The arms ``names`` (built-in or custom) of a study of ``recipe`` + ``overrides``, each checked by loading it.

    Args:
        recipe, overrides: the BA recipe and the study's ``key=value`` overrides (applied to every arm).
        names: arm names in order; built-in ones (:data:`BUILTIN`) or names of ``custom`` arms.
        custom: ``--arm`` arms.
        num_processes: processes per run (for counting an epoch-based recipe's updates per rank).
        counter: counts updates (:func:`count_updates`; tests pass a stub).

    Raises:
        ConfigError: an unknown or repeated arm name, a recipe with M = 1, an equal-time arm without both the arm
            it is timed from and ``fixed_steps``, or timed from a baseline, or an arm whose config does not load (the
            message names the arm).
    """
    known = {a.name: a for a in custom}
    cfg = config_lib.load(recipe, overrides)
    forks = TASKS[cfg.task].fork_arms(cfg) if TASKS[cfg.task].fork_arms else {}  # name -> ba.fork_layer
    for name in names:
        if name in known or name in forks:
            continue
        if name not in BUILTIN and timed_arm(name) is None:
            builtin = ", ".join([*BUILTIN, *forks, "equal_time_ARM"])
            defined = f"; --arm: {', '.join(known)}" if known else " (or define it with --arm NAME:key=value,...)"
            raise ConfigError(f"unknown arm {name!r}; built-in arms: {builtin}{defined}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--arms lists an arm twice: {','.join(names)}")
    for name in names:
        source = timed_arm(name) if name not in known else None
        if source is None:
            continue
        if is_baseline(source):
            raise ConfigError(f"{name}: an equal-time arm is timed from a BA arm, not from the baseline {source}")
        if not {source, "fixed_steps"} <= set(names):
            raise ConfigError(f"{name} is timed from the {source} and fixed_steps arms: list both in --arms")
    m = cfg.ba.repeats
    derived = [n for n in names if n in BUILTIN and n != "ba"]
    if derived and m < 2:
        raise ConfigError(f"{recipe} has ba.repeats=1: give the BA recipe (M >= 2); the baselines are derived from it")
    key = batch_key(cfg.task)
    batch = _get(cfg, key)
    tc = cfg.train
    schedule: list[str] = []
    per_epoch: int | None = None
    if derived and tc.max_epochs:
        updates, per_epoch = counter(cfg, num_processes)
        schedule = [f"train.max_updates={updates}", "train.max_epochs=0"]
    else:
        updates = tc.max_updates
    if derived and not tc.validate_interval_updates and "fixed_samples" in names:
        if per_epoch is None:
            per_epoch = counter(cfg, num_processes)[1]
        schedule.append(f"train.validate_interval_updates={per_epoch}")  # validate where the ba arm does
    arms = []
    for name in names:
        if name == "ba":
            arms.append(Arm("ba", [], f"the recipe: M={m}, {key}={batch}, {updates} updates"))
        elif name == "fixed_steps" or (timed_arm(name) and name not in known):
            micro = [f"ba.sample_chunks={max(1, cfg.ba.sample_chunks // m)}"] if cfg.ba.sample_chunks > 1 else []
            arm = Arm(name, _m1(cfg) + micro + schedule, f"M=1, {key}={batch}, {updates} updates")
            if name != "fixed_steps":
                arm.pending, arm.note = True, f"M=1, {key}={batch}, updates = {updates} x ({timed_arm(name)} " \
                                              "s/update) / (fixed_steps s/update), per seed"
            arms.append(arm)
        elif name in forks and name not in known:
            arms.append(Arm(name, [f"ba.fork_layer={forks[name]}"], f"the recipe with its M copies made after layer "
                                                                     f"{forks[name]} (ba.fork_layer)"))
        elif name == "fixed_samples":
            arms.append(Arm(name, _m1(cfg) + [f"{key}={m * batch}"] + schedule,
                            f"M=1, {key}={m * batch} (M·B distinct), {updates} updates"))
        else:
            arms.append(known[name])
    for arm in arms:
        try:
            config_lib.load(recipe, [*overrides, *arm.overrides])
        except ConfigError as err:
            raise ConfigError(f"arm {arm.name}: {err}") from None
    return arms


def equal_time_overrides(arm: Arm, cfg: config_lib.Config, ba_seconds_per_update: float,
                         fixed_seconds_per_update: float) -> list[str]:
    """The ``equal_time`` arm's overrides for one seed, from the measured seconds per update of that seed's ``ba``
    and ``fixed_steps`` runs; ``cfg`` is the equal_time config before the update count (its updates U).

    Returns ``arm.overrides`` plus ``train.max_updates = round(U * r)``, ``train.max_epochs=0`` and, for a step
    schedule, ``optim.lr_steps`` scaled by ``r = ba / fixed``.

    Raises:
        ValueError: a non-positive measurement.
    """
    if ba_seconds_per_update <= 0 or fixed_seconds_per_update <= 0:
        raise ValueError(f"equal_time needs positive seconds per update, got ba {ba_seconds_per_update}, "
                         f"fixed_steps {fixed_seconds_per_update}")
    ratio = ba_seconds_per_update / fixed_seconds_per_update
    out = [o for o in arm.overrides if not o.startswith(("train.max_updates=", "train.max_epochs="))]
    out += [f"train.max_updates={max(1, round(cfg.train.max_updates * ratio))}", "train.max_epochs=0"]
    if cfg.optim.lr_steps:
        out.append(f"optim.lr_steps=[{','.join(str(round(s * ratio)) for s in cfg.optim.lr_steps)}]")
    return out

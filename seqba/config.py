"""The one configuration schema: YAML recipe + ``key=value`` overrides -> typed dataclasses.

A recipe names its ``task``; the task decides the dataclasses of the ``data``, ``model`` and ``criterion``
sections (see :mod:`seqba.tasks`), the other sections are common::

    task: translation
    seed: 1
    output_dir: runs/transformer_wmt16_m4
    data: {...}          # task-specific, e.g. seqba.tasks.translation.TranslationDataConfig
    model: {...}         # task-specific
    criterion: {...}     # task-specific
    optim: {...}         # OptimConfig
    ba: {repeats: 4}     # BAConfig
    train: {...}         # TrainConfig

``load("recipe.yaml", ["ba.repeats=1", "train.max_updates=10"])`` parses override values as YAML scalars. Every key
is checked: an unknown or misspelt key raises :class:`ConfigError` naming the file, line, key and the valid keys;
a value of the wrong type names the expected type. Defaults live only in the dataclasses below.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "BAConfig", "OptimConfig", "TrainConfig", "Config", "load", "from_dict", "to_dict"]


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names where and what is valid."""


@dataclass
class BAConfig:
    """Batch Augmentation: every distinct sample appears ``repeats`` (M) times in its step.

    Attributes:
        repeats: M; 1 disables BA.
        layout: ``adjacent`` ([a,a,b,b]) or ``tiled`` ([a,b,a,b], copy-major; what image recipes use so that
            copies spread across ghost batches).
        group_size: consecutive ranks that load identical batches (distributed BA); divides the world size.
        micro_batches: evaluate the M·B batch in this many chunks with accumulated gradients (equal to the whole
            batch up to float error): the paper's "evaluating on the whole M·B batch or accumulating M instances".
        expand_on_device: load B distinct samples and expand with ``repeat_batch`` on the device (no extra I/O);
            ``false`` repeats indices in the sampler instead (``RepeatBatchSampler``).
    """

    repeats: int = 1
    layout: str = "adjacent"
    group_size: int = 1
    micro_batches: int = 1
    expand_on_device: bool = True

    def __post_init__(self) -> None:
        from seqba.samplers import LAYOUTS

        for name in ("repeats", "group_size", "micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (names as fairseq's).

    Attributes:
        optimizer: ``adam`` (Adam with ``betas``, ``eps``) or ``sgd`` (``momentum``, ``nesterov``).
        lr: peak learning rate.
        lr_scheduler: ``inverse_sqrt`` (linear warmup for ``warmup_updates`` from ``warmup_init_lr``, then
            lr * sqrt(warmup_updates / step), Vaswani et al. 2017 as fairseq), ``step`` (multiply by ``lr_gamma`` at
            each update in ``lr_steps``, He et al. 2016) or ``constant``.
        clip_norm: clip the gradient L2 norm to this (0 disables).
        weight_decay: L2 penalty added to the gradient (torch's coupled form); tasks may exempt BN and bias parameters.
    """

    optimizer: str = "adam"
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    lr_scheduler: str = "inverse_sqrt"
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    lr_steps: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_scheduler not in ("inverse_sqrt", "step", "constant"):
            raise ValueError(f"lr_scheduler must be inverse_sqrt, step or constant, got {self.lr_scheduler!r}")
        if self.lr < 0 or self.warmup_updates < 0 or self.clip_norm < 0:
            raise ValueError("lr, warmup_updates and clip_norm must be >= 0")


@dataclass
class TrainConfig:
    """The training loop.

    Attributes:
        max_updates: stop after this many optimizer steps (0: no limit).
        max_epochs: stop after this many epochs (0: no limit); one of the two must be set.
        update_freq: accumulate gradients over this many batches per step (``accelerator.accumulate``); a window
            may span an epoch boundary (the loader is not prepared by Accelerate, so it never sees an epoch end).
        log_interval: write a JSONL metrics line every this many updates.
        validate_interval_updates: validate every this many updates (0: at the end of each epoch only).
        save_interval_updates: checkpoint every this many updates (0: at validation time and at the end).
        keep_checkpoints: how many step checkpoints to keep (0: all).
        resume: ``auto`` (latest checkpoint in output_dir if any), ``none``, or a checkpoint directory.
        mixed_precision: ``no``, ``fp16`` or ``bf16`` (passed to Accelerate).
        num_workers: DataLoader worker processes.
        progress_bar: show a tqdm bar on the main process.
    """

    max_updates: int = 0
    max_epochs: int = 0
    update_freq: int = 1
    log_interval: int = 10
    validate_interval_updates: int = 0
    save_interval_updates: int = 0
    keep_checkpoints: int = 1
    resume: str = "auto"
    mixed_precision: str = "no"
    num_workers: int = 0
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.max_updates < 0 or self.max_epochs < 0:
            raise ValueError("max_updates and max_epochs must be >= 0")
        if self.update_freq < 1 or self.log_interval < 1:
            raise ValueError(f"update_freq and log_interval must be >= 1, got {self.update_freq}, {self.log_interval}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


@dataclass
class Config:
    """A whole experiment. ``data``, ``model`` and ``criterion`` are the task's dataclasses."""

    task: str
    data: Any
    model: Any
    criterion: Any
    seed: int = 1
    output_dir: str = "runs/default"
    optim: OptimConfig = field(default_factory=OptimConfig)
    ba: BAConfig = field(default_factory=BAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# -- building dataclasses from plain dicts, with errors that say where --------------------------------------------


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each mapping key path in a YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


class _Where:
    """Formats the location of a key path: ``recipe.yaml:12: optim.lr`` or ``command line: optim.lr``."""

    def __init__(self, source: str, lines: dict | None = None, overridden: set | None = None) -> None:
        self.source, self.lines, self.overridden = source, lines or {}, overridden or set()

    def __call__(self, path: tuple[str, ...]) -> str:
        key = ".".join(path) or "<root>"
        if any(path[: len(o)] == o for o in self.overridden):
            return f"command-line override {key}"
        line = self.lines.get(path)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"


def _coerce(value: Any, annotation: Any, path: tuple[str, ...], where: _Where) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where(path)}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where(path)}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, path, where) for v in value]
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    if annotation in (int, str, bool, float):
        if type(value) is annotation:
            return value
        raise ConfigError(f"{where(path)}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: Any, where: _Where | None = None, path: tuple[str, ...] = ()) -> Any:
    """Build dataclass ``cls`` from a dict, recursively, rejecting unknown keys and wrong types.

    Raises:
        ConfigError: naming the source, line, key path, and the valid keys or the expected type.
    """
    where = where or _Where("<config>")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where(path)}: expected a mapping of {cls.__name__} fields, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{where(path + (key,))}: unknown key {key!r} in {cls.__name__}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(v, hints[name], path + (name,), where) for name, v in values.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where(path)}: missing required key(s) {', '.join(missing)} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ checks
        raise ConfigError(f"{where(path)}: {cls.__name__}: {err}") from err


def to_dict(cfg: Any) -> dict:
    """The plain-dict form of a config (for ``config.yaml`` in the run directory and checkpoints)."""
    return dataclasses.asdict(cfg)


def _apply_override(tree: dict, override: str) -> tuple[str, ...]:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. ba.repeats=4)")
    key, raw = override.split("=", 1)
    path = tuple(key.strip().split("."))
    value = yaml.safe_load(raw) if raw.strip() else ""
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value
    return path


def build(tree: dict, where: _Where | str = "<config>") -> Config:
    """Build a :class:`Config` from a recipe dict, resolving the task's section types.

    ``where`` names the source in error messages (a path, or a locator with line numbers).
    """
    if isinstance(where, str):
        where = _Where(where)
    from seqba.tasks import TASKS  # late: the task modules import the config

    if not isinstance(tree, dict):
        raise ConfigError(f"{where(())}: a recipe must be a mapping")
    task = tree.get("task")
    if task not in TASKS:
        raise ConfigError(f"{where(('task',))}: unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    spec = TASKS[task]
    common = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(tree) - common)
    if unknown:
        raise ConfigError(f"{where((unknown[0],))}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(common))}")
    sections = {"data": spec.data_config, "model": spec.model_config, "criterion": spec.criterion_config}
    kwargs: dict[str, Any] = {"task": task}
    for name, cls in sections.items():
        kwargs[name] = from_dict(cls, tree.get(name), where, (name,))
    for f in dataclasses.fields(Config):
        if f.name in kwargs or f.name not in tree:
            continue
        kwargs[f.name] = _coerce(tree[f.name], typing.get_type_hints(Config)[f.name], (f.name,), where)
    return Config(**kwargs)


# Keys renamed since seqba 0.1.0 development began: (section, old key) -> new key (None: dropped).
_RENAMED = {("train", "validate_interval"): "validate_interval_updates",
            ("train", "save_interval"): "save_interval_updates",
            ("train", "eval_batch_size"): None}


def upgrade(tree: dict) -> dict:
    """Rename keys of a config saved by an older seqba (e.g. inside a checkpoint) to the current schema."""
    for (section, old), new in _RENAMED.items():
        values = tree.get(section)
        if isinstance(values, dict) and old in values:
            value = values.pop(old)
            if new is not None:
                values.setdefault(new, value)
    return tree


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML recipe (``yaml.safe_load``), apply ``key=value`` overrides, and build the typed config.

    Raises:
        FileNotFoundError: if the recipe does not exist.
        ConfigError: for YAML errors, unknown keys (with the valid ones) and wrong types, naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        tree = yaml.safe_load(text) or {}
        lines = _line_index(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    overridden = {_apply_override(tree, override) for override in overrides}
    return build(tree, _Where(str(path), lines, overridden))

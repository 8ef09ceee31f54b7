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

``load("recipe.yaml", ["ba.repeats=1", "train.max_updates=10"])`` reads override values as YAML where YAML means
what the text says (numbers, booleans, flow lists and mappings, quoted strings) and as the text itself otherwise
(``output_dir=/tmp/st #8`` is that path, not ``/tmp/st`` and a comment; see :func:`override_value`); a mapping is
merged into its section (``ba={repeats: 2}`` keeps the recipe's other ``ba`` keys). Recipes may not use YAML
aliases (``*name``): expanding nested aliases is exponential (a "billion laughs" recipe). Every key
is checked: an unknown or misspelt key raises :class:`ConfigError` naming the file, line, key and the valid keys;
a value of the wrong type or range names the expected one (a dataclass's ``__post_init__`` raises
:class:`~seqba.errors.FieldError` for its field). Choice fields are ``Literal[...]``, checked by the coercion.
Cross-field checks (the common ones here, the task's in ``TaskSpec.check``) also run in :func:`load`, before any
process starts or anything is written. Defaults live only in the dataclasses.

Import order: ``seqba.errors`` (leaf) <- ``seqba.tasks`` (a lazy registry) <- ``seqba.config``; task modules never
import this module.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seqba.consistency import CONSISTENCY
from seqba.errors import ConfigError, FieldError
from seqba.overrides import apply_override, format_override, override_keys, override_value, parse_override
from seqba.tasks import TASKS

__all__ = ["ConfigError", "FieldError", "BAConfig", "OptimConfig", "TrainConfig", "Config", "Where", "load",
           "build", "from_dict", "to_dict", "upgrade", "apply_override", "parse_override", "override_value",
           "override_keys", "format_override"]

#: The largest finite float32: learning rates and optimizer constants must stay below it.
FLOAT32_MAX = 3.4028234663852886e38

#: Seeds go to ``torch.manual_seed`` (at most 2**64 - 1) with ``+ epoch`` added; numpy takes any int >= 0.
MAX_SEED = 2**63 - 1

#: How the M copies of a sample are laid out in the expanded batch (see :class:`seqba.layout.CopyLayout`).
Layout = Literal["adjacent", "tiled"]


def _require(name: str, ok: bool, message: str) -> None:
    """Raise :class:`FieldError` for field ``name`` unless ``ok``."""
    if not ok:
        raise FieldError(name, message)


@dataclass
class BAConfig:
    """Batch Augmentation: every distinct sample appears ``repeats`` (M) times in its step.

    Attributes:
        repeats: M; 1 disables BA.
        layout: ``adjacent`` ([a,a,b,b]) or ``tiled`` ([a,b,a,b], copy-major; what image recipes use so that
            copies spread across ghost batches).
        group_size: consecutive ranks that load identical batches (distributed BA); divides the world size.
        sample_chunks: cut each expanded M·B batch into this many chunks on sample boundaries (every copy of a
            sample in one chunk) and run forward + backward chunk by chunk, accumulating gradients (equal to the
            whole batch up to float error): the paper's "evaluating on the whole M·B batch or accumulating M
            instances", for memory. Not gradient accumulation over batches, which is ``train.update_freq``.
            (Formerly ``ba.micro_batches``: "micro-batch" elsewhere (torchtitan, DeepSpeed) names the accumulation
            unit.)
        expand_on_device: load B distinct samples and expand with ``repeat_batch`` on the device (no extra I/O);
            ``false`` repeats indices in the sampler instead (``RepeatBatchSampler``).
        consistency: a loss across the M copies of every sample, a kind registered in
            :data:`seqba.consistency.CONSISTENCY`: ``sym_kl`` (mean pairwise symmetric KL; R-Drop at M=2), ``js``
            (generalised Jensen-Shannon; AugMix, timm ``JsdCrossEntropy``), or ``none``. Per target token
            (translation), per token of the copy columns (language modelling) or per image (on class
            probabilities). Needs M > 1 and every copy of a sample on one rank (``group_size: 1``: copies spread
            over ranks would need a gradient-correct all-gather).
        fork_layer: k, where the copies are made (issue 21; multi-sample dropout, Inoue 2019, generalised): 0
            (BA, Hoffer et al.) repeats the input; k > 0 runs the model's first k layers once per distinct sample
            and repeats their output M times, so the copies differ only by the masks above layer k (layers counted
            bottom-up, an encoder's before a decoder's; :class:`seqba.models.fork.Fork`). Each task says which k
            its model allows (images: only 0, their copies are augmentations of the input).
        consistency_alpha: its weight: the update minimises (sum of CE over the M·B rows + alpha * consistency
            summed over the B distinct samples) / (target tokens of the M·B rows). R-Drop's ``reg_alpha`` at M
            copies corresponds to ``consistency_alpha = M / 2 * reg_alpha`` (the same number at M=2).
    """

    repeats: int = 1
    layout: Layout = "adjacent"
    group_size: int = 1
    sample_chunks: int = 1
    expand_on_device: bool = True
    consistency: str = "none"  # "none" or a key of seqba.consistency.CONSISTENCY
    consistency_alpha: float = 0.0
    fork_layer: int = 0

    def __post_init__(self) -> None:
        _require("fork_layer", self.fork_layer >= 0, f"must be >= 0, got {self.fork_layer}")
        _require("fork_layer", self.fork_layer == 0 or self.repeats >= 2,
                 f"{self.fork_layer} needs ba.repeats >= 2 (copies to make)")
        _require("fork_layer", self.fork_layer == 0 or self.expand_on_device,
                 "a fork makes the copies inside the model: it needs ba.expand_on_device: true")
        for name in ("repeats", "group_size", "sample_chunks"):
            _require(name, getattr(self, name) >= 1, f"must be >= 1, got {getattr(self, name)}")
        kinds = ("none", *CONSISTENCY)
        _require("consistency", self.consistency in kinds, f"{self.consistency!r} is not one of {', '.join(kinds)}")
        _require("consistency_alpha", self.consistency_alpha >= 0, f"must be >= 0, got {self.consistency_alpha}")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (names as fairseq's).

    Attributes:
        optimizer: ``adam`` (Adam with ``betas``, ``eps``; ``weight_decay`` as an L2 term in the gradient, as
            fairseq's ``adam`` and ``torch.optim.Adam``), ``adamw`` (the same moments with decoupled weight decay,
            Loshchilov & Hutter 2019, ``torch.optim.AdamW``: each step shrinks a parameter by lr x weight_decay, the
            GPT/nanoGPT/torchtune default) or ``sgd`` (``momentum``, ``nesterov``).
        lr: peak learning rate.
        lr_scheduler: ``inverse_sqrt`` (linear warmup for ``warmup_updates`` from ``warmup_init_lr``, then
            lr * sqrt(warmup_updates / step), Vaswani et al. 2017 as fairseq), ``step`` (multiply by ``lr_gamma`` at
            each update in ``lr_steps``, He et al. 2016) or ``constant``.
        clip_norm: clip the gradient L2 norm to this (0 disables).
        weight_decay: ``adam``/``sgd``: L2 penalty added to the gradient (torch's coupled form); ``adamw``: decoupled
            decay. Tasks may exempt BN, LayerNorm, bias and embedding parameters (their parameter groups).
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    lr_scheduler: Literal["inverse_sqrt", "step", "constant"] = "inverse_sqrt"
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    lr_steps: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lr", "warmup_updates", "clip_norm", "weight_decay", "momentum", "warmup_init_lr", "lr_gamma"):
            _require(name, getattr(self, name) >= 0, f"must be >= 0, got {getattr(self, name)}")
        _require("eps", self.eps > 0, f"must be > 0, got {self.eps}")
        _require("betas", len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
                 f"must be two numbers in [0, 1), got {self.betas}")
        _require("lr_steps", all(s >= 0 for s in self.lr_steps), f"must be update numbers >= 0, got {self.lr_steps}")
        for name in ("lr", "warmup_init_lr", "eps", "weight_decay", "momentum", "clip_norm"):
            _require(name, getattr(self, name) <= FLOAT32_MAX,
                     f"must be at most {FLOAT32_MAX:.4g} (float32's largest), got {getattr(self, name)}")
        self._check_peak_step()

    def _check_peak_step(self) -> None:
        """The largest step size the schedule reaches must be a finite float32 (torch passes it to float32 kernels:
        beyond that, the first such update fails with "value cannot be converted to type float without overflow").

        The step size is the scheduled lr, divided by ``1 - betas[0]`` for Adam (its first-step bias correction).
        Computed in logarithms, so ``lr_gamma ** len(lr_steps)`` cannot overflow here.
        """
        peaks = [("lr", self.lr)]
        if self.lr_scheduler == "inverse_sqrt" and self.warmup_updates:
            peaks.append(("warmup_init_lr", self.warmup_init_lr))  # the warmup starts there
        for name, lr in peaks:
            if lr <= 0:
                continue
            log_peak = math.log(lr)
            if self.lr_scheduler == "step" and self.lr_gamma > 1 and self.lr_steps:
                log_peak += len(self.lr_steps) * math.log(self.lr_gamma)  # after the last milestone
                name = "lr_gamma"
            if self.optimizer in ("adam", "adamw"):
                log_peak -= math.log1p(-self.betas[0])
            _require(name, log_peak <= math.log(FLOAT32_MAX),
                     f"the step size it schedules reaches about 1e{log_peak / math.log(10):.0f} (the peak lr"
                     f"{' / (1 - betas[0]), Adam' if self.optimizer != 'sgd' else ''}), beyond float32's largest "
                     f"{FLOAT32_MAX:.4g}")


@dataclass
class TrainConfig:
    """The training loop.

    Attributes:
        max_updates: stop after this many optimizer steps (0: no limit).
        max_epochs: stop after this many epochs (0: no limit); one of the two must be set.
        update_freq: accumulate gradients over this many batches per update (fairseq's ``--update-freq``); the
            last update of an epoch takes the batches that are left (fewer), so updates never span epochs and a
            checkpoint always falls on an update boundary.
        log_interval: write a JSONL metrics line every this many updates.
        validate_interval_updates: validate every this many updates (0: at the end of each epoch only).
        save_interval_updates: checkpoint every this many updates (0: at validation time and at the end).
        keep_checkpoints: how many step checkpoints to keep (0: all).
        resume: ``auto`` (latest checkpoint in output_dir if any), ``none``, or a checkpoint directory.
        mixed_precision: ``no``, ``fp16``, ``bf16`` or ``auto`` (passed to Accelerate: autocast on CPU and GPU;
            fp16 adds a loss scaler and needs a CUDA GPU: refused on the CPU at start-up; ``auto`` times fp32 and
            bf16 on this machine once per model and keeps the faster: :mod:`seqba.precision`). Under autocast the losses are computed in float32 from the low-precision
            logits, and on the CPU the Transformer's attention runs in float32
            (:func:`seqba.models.transformer.attention`).
        compile: compile the training model with ``torch.compile`` (inductor, ``dynamic=`` the task's
            ``compile_dynamic``); the loss, repetition and optimizer step stay eager, and validation, checkpoints
            and decoding use the eager module. Its speed per task: README and ``benchmarks/``.
        log_with: also send the metrics.jsonl records to an experiment tracker through Accelerate
            (``accelerator.log``): ``tensorboard`` (event files in ``output_dir/trackers``), ``wandb``, ``mlflow``
            (their clients must be installed and configured), or ``none``.
        num_workers: DataLoader worker processes.
        progress_bar: show a tqdm bar on the main process.
        grad_stats_interval: every this many updates, log the gradient statistics of the update's batch across
            its M copies (:class:`seqba.gradstats.GradStats`: 1 forward + M backward passes more); 0: off.
    """

    max_updates: int = 0
    max_epochs: int = 0
    update_freq: int = 1
    log_interval: int = 10
    validate_interval_updates: int = 0
    save_interval_updates: int = 0
    keep_checkpoints: int = 1
    resume: str = "auto"
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    compile: bool = False
    log_with: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    num_workers: int = 0
    progress_bar: bool = True
    grad_stats_interval: int = 0

    def __post_init__(self) -> None:
        for name in ("max_updates", "max_epochs", "validate_interval_updates", "save_interval_updates",
                     "keep_checkpoints", "num_workers", "grad_stats_interval"):
            _require(name, getattr(self, name) >= 0, f"must be >= 0, got {getattr(self, name)}")
        for name in ("update_freq", "log_interval"):
            _require(name, getattr(self, name) >= 1, f"must be >= 1, got {getattr(self, name)}")
        _require("resume", bool(self.resume), "must be auto, none or a checkpoint directory")


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

    def __post_init__(self) -> None:
        _require("seed", 0 <= self.seed <= MAX_SEED, f"must be in [0, 2**63 - 1], got {self.seed}")


# -- building dataclasses from plain dicts, with errors that say where --------------------------------------------


def _line_index(text: str, source: str = "<recipe>") -> dict[tuple[str, ...], int]:
    """Map each mapping key path in a YAML document to its 1-based line.

    Raises:
        ConfigError: a key given twice in one mapping (``yaml.safe_load`` would keep the last silently).
    """
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                if sub in lines:
                    raise ConfigError(f"{source}:{key.start_mark.line + 1}: {'.'.join(sub)} given twice "
                                      f"(first on line {lines[sub]})")
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _refuse_aliases(text: str, source: str) -> None:
    """Raise :class:`ConfigError` at the first YAML alias (``*name``, ``<<: *name``) of a recipe.

    Reads the event stream only (linear in the text): ``yaml.safe_load`` and any walk over its result would expand
    nested aliases exponentially (9 lines of anchors: minutes and gigabytes).
    """
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"{source}:{event.start_mark.line + 1}: YAML alias *{event.anchor} is not allowed in "
                              "a recipe; write the value out")


class Where:
    """Formats the location of a key path: ``recipe.yaml:12: optim.lr`` or ``command-line override optim.lr``.

    ``lines`` maps key paths to recipe lines; ``overridden`` holds the key paths set on the command line (an
    error about such a key, or anything below it, names the override rather than a recipe line).
    """

    def __init__(self, source: str, lines: dict | None = None, overridden: set | None = None) -> None:
        self.source, self.lines, self.overridden = source, lines or {}, overridden or set()

    def __call__(self, path: tuple[str, ...]) -> str:
        key = ".".join(path) or "<root>"
        if any(path[: len(o)] == o for o in self.overridden):
            return f"command-line override {key}"
        line = self.lines.get(path)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"


# YAML 1.1 reads these unquoted words as booleans; a choice spelled that way (Accelerate's ``no``) is meant.
_YAML_BOOL_WORDS = {False: ("no", "false", "off"), True: ("yes", "true", "on")}


def _coerce(value: Any, annotation: Any, path: tuple[str, ...], where: Where) -> Any:
    """Check ``value`` against the type ``annotation`` (recursively) and convert where YAML is lossy."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if isinstance(value, bool):
            value = next((c for c in args if str(c).lower() in _YAML_BOOL_WORDS[value]), value)
        if value not in args or isinstance(value, bool):
            raise ConfigError(f"{where(path)}: {value!r} is not one of {', '.join(map(str, args))}")
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
    if annotation is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{where(path)}: expected float, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where(path)}: expected a finite number, got {value!r}")
        return float(number)
    if annotation in (int, str, bool):
        if type(value) is annotation:
            return value
        raise ConfigError(f"{where(path)}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: Any, where: Where | None = None, path: tuple[str, ...] = ()) -> Any:
    """Build dataclass ``cls`` from a dict, recursively, rejecting unknown keys and wrong types.

    A :class:`~seqba.errors.FieldError` raised by ``cls.__post_init__`` is reported at that field's location.

    Raises:
        ConfigError: naming the source, line, key path, and the valid keys or the expected type.
    """
    where = where or Where("<config>")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where(path)}: expected a mapping of {cls.__name__} fields, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        key = unknown[0]
        renamed = _RENAMED.get((path[-1], key)) if path else None
        if renamed is not None:
            raise ConfigError(f"{where(path + (str(key),))}: renamed to {'.'.join(path + (renamed,))} (same "
                              "meaning); rename the key")
        raise ConfigError(f"{where(path + (str(key),))}: unknown key {key!r} in {cls.__name__}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(v, hints[name], path + (name,), where) for name, v in values.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where(path)}: missing required key(s) {', '.join(missing)} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except FieldError as err:
        raise ConfigError(f"{where(path + (err.field,))}: {err.message}") from None
    except (ValueError, TypeError) as err:  # other __post_init__ checks
        raise ConfigError(f"{where(path)}: {cls.__name__}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """The plain-dict form of a config (for ``config.yaml`` in the run directory and checkpoints)."""
    return dataclasses.asdict(cfg)


def _check(cfg: Config, where: Where) -> None:
    """Cross-field checks of the common sections, then the task's own (``TaskSpec.check``)."""
    tc = cfg.train
    if tc.max_updates == 0 and tc.max_epochs == 0:
        raise ConfigError(f"{where(('train', 'max_updates'))}: set train.max_updates or train.max_epochs (> 0)")
    ba = cfg.ba
    if ba.consistency != "none":
        if ba.repeats < 2:
            raise ConfigError(f"{where(('ba', 'consistency'))}: {ba.consistency} compares the copies of a sample; "
                              "it needs ba.repeats >= 2")
        if ba.group_size > 1:
            raise ConfigError(f"{where(('ba', 'consistency'))}: with ba.group_size={ba.group_size} the copies of a "
                              "sample are on different ranks and cannot meet; use group_size 1 (all M copies on "
                              "every rank)")
        if ba.consistency_alpha <= 0:
            raise ConfigError(f"{where(('ba', 'consistency_alpha'))}: set a weight > 0 for ba.consistency="
                              f"{ba.consistency}")
    TASKS[cfg.task].check(cfg, where)


def build(tree: Any, where: Where | str = "<config>") -> Config:
    """Build a :class:`Config` from a recipe dict, resolving the task's section types, and run every check.

    ``where`` names the source in error messages (a path, or a :class:`Where` with line numbers).

    Raises:
        ConfigError: unknown keys or task, wrong types, invalid values or combinations.
    """
    if isinstance(where, str):
        where = Where(where)
    if not isinstance(tree, dict):
        raise ConfigError(f"{where.source}: a recipe must be a mapping of sections, got {type(tree).__name__}")
    task = tree.get("task")
    if task not in TASKS:
        raise ConfigError(f"{where(('task',))}: unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    spec = TASKS[task]
    common = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(tree) - common, key=str)
    if unknown:
        raise ConfigError(f"{where((str(unknown[0]),))}: unknown key {unknown[0]!r}; "
                          f"valid keys: {', '.join(sorted(common))}")
    sections = {"data": spec.data_config, "model": spec.model_config, "criterion": spec.criterion_config}
    kwargs: dict[str, Any] = {"task": task}
    for name, cls in sections.items():
        kwargs[name] = from_dict(cls, tree.get(name), where, (name,))
    for f in dataclasses.fields(Config):
        if f.name in kwargs or f.name not in tree:
            continue
        kwargs[f.name] = _coerce(tree[f.name], typing.get_type_hints(Config)[f.name], (f.name,), where)
    try:
        cfg = Config(**kwargs)
    except FieldError as err:
        raise ConfigError(f"{where((err.field,))}: {err.message}") from None
    if not cfg.output_dir.strip():
        raise ConfigError(f"{where(('output_dir',))}: must name a folder (empty: the run would write into the "
                          "current directory)")
    _check(cfg, where)
    return cfg


# Keys renamed since seqba 0.1.0 development began: (section, old key) -> new key (None: dropped).
_RENAMED = {("ba", "micro_batches"): "sample_chunks",
            ("train", "validate_interval"): "validate_interval_updates",
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
    """Load a YAML recipe (``yaml.safe_load``), apply ``key=value`` overrides, build the typed config and check it.

    Every check runs here, before any process starts or anything is written (only ``ba.group_size`` against
    the number of processes waits for the launch).

    Raises:
        FileNotFoundError: if the recipe does not exist.
        ConfigError: for non-UTF-8 or invalid YAML, a recipe that is not a mapping, unknown keys (with the valid
            ones), wrong types and invalid values or combinations, naming file and line or the override.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"recipe {path} is a folder; give a YAML file, e.g. recipes/transformer_multi30k_m4.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        _refuse_aliases(text, str(path))  # before anything expands them
        tree = yaml.safe_load(text)
        lines = _line_index(text, str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if tree is None:
        raise ConfigError(f"{path}: the recipe is empty (it needs task:, data:, model:, ... sections)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections (task:, data:, ...), "
                          f"got a {type(tree).__name__}")
    overridden = set()
    for override in overrides:
        apply_override(tree, override)
        overridden.update(override_keys(override))
    where = Where(str(path), lines, overridden)
    cfg = build(tree, where)
    resume = cfg.train.resume
    if resume not in ("auto", "none") and not Path(resume).is_dir():
        raise ConfigError(f"{where(('train', 'resume'))}: no checkpoint directory at {resume} "
                          "(use auto, none, or a checkpoints/step_* folder)")
    return cfg

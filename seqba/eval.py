"""Evaluate a trained checkpoint: ``python -m seqba.eval --checkpoint RUN/checkpoint_best.pt [options]``.

The checkpoint file (written by ``seqba.train``) holds the model weights and the recipe's config; the task family
named in that config evaluates it (``TaskSpec.evaluate``) with its own options: every field of the family's
``TaskSpec.eval_options`` dataclass is an option here (``--help`` lists them per family, e.g. beam search for a
text generator, test-time augmentation for an image classifier), on top of the common ``--checkpoint``, ``--split``,
``--device`` and ``--metrics-out``.

Prints a JSON line with the metrics (and writes it to ``--metrics-out`` when given). Every option is checked
before any work: numbers, files to read (they exist) and to write (their folder must exist and be writable),
options of another family (e.g. ``--tta`` for a checkpoint whose family has no such option) and, when the
checkpoint recorded the fingerprint of its corpus, that the corpus on disk today is the same one. A bad one, or an
unreadable checkpoint, is one ``error:`` line and exit status 2.

Options are parsed in two steps: the options of every built-in family are known before the checkpoint is read (so
their values are checked first); the family a checkpoint names then takes its own, and a family outside seqba (a
``task:`` module path) has its options parsed once its checkpoint has named it.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn

import torch

from seqba.allocator import configure_malloc
from seqba.checkpoint import load_model_file
from seqba.errors import SeqbaError, UsageError
from seqba.tasks import TASKS
from seqba.tasks.spec import TaskSpec

__all__ = ["main", "build_parser", "check_args", "check_output", "load_model_file"]


def _number(kind: type, low: float | None = None, *, allow_none: bool = False, strict: bool = False) -> Callable:
    """An argparse ``type`` that accepts finite ``kind`` values ``>= low`` (``> low`` when ``strict``)."""
    def parse(text: str):
        if allow_none and text.lower() == "none":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text!r}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # main prints one line, no usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


#: Common options that ``seqba.compare`` sets per run (with a family's test-set files and outputs file); its
#: ``--eval-args`` may not set them.
PER_RUN_OPTIONS = ("checkpoint", "split", "metrics_out")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def per_run_options(spec: TaskSpec) -> tuple[str, ...]:
    """The options ``seqba.compare`` sets per run of family ``spec``: :data:`PER_RUN_OPTIONS`, the raw test-set
    files (``spec.test_set_options``) and the outputs file (``spec.outputs_option``)."""
    return (*PER_RUN_OPTIONS, *(spec.test_set_options or ()), *((spec.outputs_option,) if spec.outputs_option else ()))


def check_args(argv: list[str], task: str) -> None:
    """Check extra ``seqba.eval`` options for checkpoints of ``task`` (``seqba.compare --eval-args``) without
    running anything.

    Raises:
        UsageError: an unknown option (another family's too) or a bad value (argparse's message), or one of
            :func:`per_run_options`.
    """
    sentinel = "\0checkpoint"
    parser = build_parser([task])
    args = vars(parser.parse_args(["--checkpoint", sentinel, *argv]))
    defaults = vars(parser.parse_args(["--checkpoint", sentinel]))
    taken = [name for name in per_run_options(TASKS[task]) if name in args and args[name] != defaults.get(name, args)]
    if taken:
        raise UsageError(f"{_flag(taken[0])} is set per run by seqba.compare")


def check_output(path: str | Path, option: str, make_folder: bool = False) -> None:
    """Check that the file ``path`` can be written, before any work: its folder exists (``make_folder``: is
    created now), is writable (a probe file is created and removed there: catches read-only filesystems and
    permissions) and ``path`` is not a folder.

    Raises:
        UsageError: naming ``option``, the path and what is wrong.
    """
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{option} {out}: is a folder")
    if make_folder:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"{option} {out}: cannot create folder {out.parent} ({err.strerror or err})") from None
    if not out.parent.is_dir():
        raise UsageError(f"{option} {out}: folder {out.parent} does not exist")
    probe = out.parent / f".{out.name}.probe{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
        if out.exists() and not os.access(out, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as err:
        raise UsageError(f"{option} {out}: cannot write there ({err.strerror or err})") from None


def _check_corpus(spec, cfg, meta: dict, checkpoint: Path) -> None:
    """Refuse a checkpoint whose recorded corpus fingerprint (``meta["corpus"]``) differs from today's.

    Raises:
        SeqbaError: naming both fingerprints and the data folder.
    """
    recorded = meta.get("corpus")
    if recorded is None or spec.fingerprint is None:
        return
    current = spec.fingerprint(cfg)
    if current != recorded:
        folder = getattr(cfg.data, "prepared_dir", None) or getattr(cfg.data, "root", None)
        raise SeqbaError(f"{checkpoint} was trained on corpus {recorded}, but {folder} now holds corpus {current} "
                         "(rebuilt since?); evaluate with the corpus it was trained on, or prepare it again with "
                         "the run's data.prepare options")



class _EvalParser(_Parser):
    """The parser with, for every family option, the families that own it and its field (for file checks)."""

    owners: dict[str, list[str]]
    fields: dict[str, dataclasses.Field]


def _base_type(hint: Any, where: str) -> type:
    """``int`` of ``int``, ``int | None`` or ``Optional[int]``.

    Raises:
        TypeError: a union of several types, or a type other than bool, int, float and str.
    """
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        raise TypeError(f"{where}: an eval option is a bool, int, float or str (or None), got {hint}")
    return kinds[0]


def _argument(options: type, f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """``add_argument`` keywords of the option of field ``f`` of an ``EvalOptions`` subclass.

    The default is not put in the namespace (``argparse.SUPPRESS``): an option absent there was not given, and the
    family's dataclass supplies its default.
    """
    where = f"{options.__name__}.{f.name}"
    if f.default is dataclasses.MISSING:
        raise TypeError(f"{where}: an eval option needs a default (use seqba.tasks.spec.option)")
    kind, meta = _base_type(hint, where), f.metadata
    text = meta.get("help", "").replace("%", "%%")
    if f.default not in (None, False):
        text += f" (default: {f.default})"
    out: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
    if kind is bool:
        out["action"] = "store_true"
    elif kind is str:
        out.update(type=str, metavar="FILE" if meta.get("file") else "TEXT")
    else:
        out.update(type=_number(kind, meta.get("low"), strict=meta.get("strict", False)), metavar=kind.__name__.upper())
    return out


def build_parser(tasks: Iterable[str] | None = None) -> _EvalParser:
    """``seqba.eval``'s parser: the common options, then one group per family of ``tasks`` (default: the built-in
    families), generated from its ``TaskSpec.eval_options``.

    An option that several families declare is added once (its first declaration parses it) and belongs to each
    of them (``parser.owners``: dest -> families).

    Raises:
        TypeError: a family's options dataclass with a field that cannot be an option, or a field another family
            declares with another type.
    """
    p = _EvalParser(prog="python -m seqba.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint_best.pt / checkpoint_last.pt, or a run directory")
    p.add_argument("--split", default="test", help="split of the recipe's data to evaluate (default: test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--metrics-out", help="also write the metrics JSON here")
    p.owners, p.fields = {}, {}
    kinds: dict[str, type] = {}
    for name in list(TASKS) if tasks is None else tasks:
        options = TASKS[name].eval_options
        hints = typing.get_type_hints(options)
        group = None
        for f in options.task_fields():
            kind = _base_type(hints[f.name], f"{options.__name__}.{f.name}")
            if f.name not in p.owners:
                group = group or p.add_argument_group(name, f"options of {name} checkpoints")
                group.add_argument(_flag(f.name), **_argument(options, f, hints[f.name]))
                p.owners[f.name], p.fields[f.name], kinds[f.name] = [], f, kind
            elif kinds[f.name] is not kind:
                raise TypeError(f"{options.__name__}.{f.name}: {_flag(f.name)} is a {kinds[f.name].__name__} option "
                                f"of {p.owners[f.name][0]}, not a {kind.__name__}")
            p.owners[f.name].append(name)
    return p


def _check_files(values: dict[str, Any], fields: Iterable[dataclasses.Field]) -> None:
    """Files named by options: ``file="read"`` ones exist, ``file="write"`` ones can be written (:func:`check_output`).

    Raises:
        UsageError: naming the option and the file.
    """
    for f in fields:
        path, kind = values.get(f.name), f.metadata.get("file")
        if not path or kind is None:
            continue
        if kind == "read" and not Path(path).is_file():
            raise UsageError(f"{_flag(f.name)} file not found: {path}")
        if kind == "write":
            check_output(path, _flag(f.name))


def _foreign_options(args: argparse.Namespace, owners: dict[str, list[str]], task: str, checkpoint: Path) -> str | None:
    """The error for options given in ``args`` that belong to other families only, or None.

    A family's raw test-set options (``--src``/``--ref``) are named as what they are; others one by one with
    their families.
    """
    foreign = [dest for dest, families in owners.items() if dest in vars(args) and task not in families]
    if not foreign:
        return None
    for dest in foreign:
        for owner in owners[dest]:
            files = TASKS[owner].test_set_options or ()
            if dest in files:
                return (f"{'/'.join(map(_flag, files))} apply to {owner}; a {task} checkpoint is evaluated on "
                        "--split of its data")
    named = [f"{_flag(dest)} (a {'/'.join(owners[dest])} option)" for dest in foreign]
    return f"{', '.join(named)} does not apply to {checkpoint}, a {task} checkpoint"


def main(argv: list[str] | None = None) -> int:
    configure_malloc()  # glibc: no mmap/trim churn (seqba.allocator); SEQBA_MALLOC=default turns it off
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()  # the built-in families' options; the rest may be a family module's (below)
        args, rest = parser.parse_known_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _error(f"--device {args.device}: this torch build sees no CUDA device (use --device cpu)")
    try:
        if args.metrics_out:
            check_output(args.metrics_out, "--metrics-out")
        _check_files(vars(args), parser.fields.values())
    except UsageError as err:
        return _error(err)
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "checkpoint_best.pt"
    try:
        cfg, state, meta = load_model_file(checkpoint)
        spec = TASKS[cfg.task]
        if cfg.task not in list(TASKS):
            parser = build_parser([*TASKS, cfg.task])  # a family module: its options are known now
            args = parser.parse_args(argv)
            _check_files(vars(args), parser.fields.values())
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SeqbaError as err:
        return _error(err)
    if spec.evaluate is None:
        return _error(f"task {cfg.task!r} has no evaluation")
    foreign = _foreign_options(args, parser.owners, cfg.task, checkpoint)
    if foreign:
        return _error(foreign)
    own = {f.name: getattr(args, f.name) for f in spec.eval_options.task_fields() if f.name in vars(args)}
    try:
        options = spec.eval_options(checkpoint=str(checkpoint), split=args.split, device=args.device, **own)
        _check_files(dataclasses.asdict(options), spec.eval_options.task_fields())  # defaults resolved
        _check_corpus(spec, cfg, meta, checkpoint)
    except (SeqbaError, OSError) as err:
        return _error(err)
    try:
        metrics = spec.evaluate(cfg, state, options)
    except (FileNotFoundError, ValueError, SeqbaError, RuntimeError) as err:
        return _error(err)
    update = {"update": meta["step"]} if isinstance(meta.get("step"), int) else {}  # the checkpoint's update
    line = json.dumps({"task": cfg.task, "checkpoint": str(checkpoint), **update, **metrics})
    print(line)
    if args.metrics_out:
        Path(args.metrics_out).write_text(line + "\n")
    return 0


def _error(err: BaseException | str) -> int:
    if os.environ.get("SEQBA_TRACEBACK") == "1" and isinstance(err, BaseException):
        raise err
    print(f"error: {str(err).strip()}".replace("\n", " "), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

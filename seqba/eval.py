"""Evaluate a trained checkpoint: ``python -m seqba.eval --checkpoint RUN/checkpoint_best.pt [options]``.

The checkpoint file (written by ``seqba.train``) holds the model weights and the recipe's config; the task named
in that config evaluates it:

* translation: batched beam search with the KV cache (``--beam 4``, greedy with ``--beam 1``), SentencePiece
  decoding, sacreBLEU on the detokenized references; hypotheses are written in input order to ``--output``
  (default: ``hyp.<split>.txt`` beside the checkpoint file). Source: ``--split test`` of the prepared corpus, or
  explicit ``--src``/``--ref`` text files.
* language_modeling: perplexity and bits per word (eval batch size 1 for test, 10 for valid, as awd-lstm-lm).
* image_classification: top-1 accuracy, with ``--tta N`` averaging the softmax over N augmented copies.

Prints a JSON line with the metrics (and writes it to ``--metrics-out`` when given). Every option is checked
before any work: numbers, output files (their folder must exist and be writable), options of another task (e.g.
``--tta`` for a translation checkpoint) and, when the checkpoint recorded the fingerprint of its corpus, that the
corpus on disk today is the same one. A bad one, or an unreadable checkpoint, is one ``error:`` line and exit
status 2.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

import torch

from seqba.allocator import configure_malloc
from seqba.checkpoint import load_model_file
from seqba.errors import SeqbaError, UsageError
from seqba.search import DEFAULT_MAX_LEN_A, DEFAULT_MAX_LEN_B
from seqba.tasks import TASKS
from seqba.tasks.base import EvalOptions

__all__ = ["main", "build_parser", "check_args", "check_output", "load_model_file"]

#: argparse group title -> the task whose checkpoints its options apply to
GROUP_TASKS = {"translation": "translation", "images": "image_classification"}


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


#: Options that ``seqba.compare`` sets per run; its ``--eval-args`` may not set them.
PER_RUN_OPTIONS = ("checkpoint", "split", "src", "ref", "output", "metrics_out")


def check_args(argv: list[str]) -> None:
    """Check extra ``seqba.eval`` options (``seqba.compare --eval-args``) without running anything.

    Raises:
        UsageError: an unknown option or a bad value (argparse's message), or one of :data:`PER_RUN_OPTIONS`.
    """
    sentinel = "\0checkpoint"
    args = build_parser().parse_args(["--checkpoint", sentinel, *argv])
    defaults = build_parser().parse_args(["--checkpoint", sentinel])
    taken = [name for name in PER_RUN_OPTIONS if getattr(args, name) != getattr(defaults, name)]
    if taken:
        raise UsageError(f"--{taken[0].replace('_', '-')} is set per run by seqba.compare")


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


def _option_owners() -> dict[str, tuple[str, str]]:
    """dest -> (option string, task) for the options that apply to one task only (see :data:`GROUP_TASKS`)."""
    owners = {}
    for group in build_parser()._action_groups:  # noqa: SLF001 - argparse keeps its groups there
        task = GROUP_TASKS.get(group.title)
        if task is not None:
            owners.update({a.dest: (a.option_strings[0], task) for a in group._group_actions})  # noqa: SLF001
    return owners


def _foreign_options(args: argparse.Namespace, task: str) -> list[str]:
    """The options set in ``args`` that apply to another task only (``--tta`` for translation, ...).

    ``--src``/``--ref`` are left to each task's ``evaluate``, which refuses them naming what it evaluates instead.
    """
    defaults = build_parser().parse_args(["--checkpoint", "x"])
    return [f"{option} (a {owner} option)" for dest, (option, owner) in _option_owners().items()
            if owner != task and dest not in ("src", "ref") and getattr(args, dest) != getattr(defaults, dest)]


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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m seqba.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint_best.pt / checkpoint_last.pt, or a run directory")
    p.add_argument("--split", default="test", help="split of the recipe's data to evaluate (default: test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--metrics-out", help="also write the metrics JSON here")
    t = p.add_argument_group("translation")
    t.add_argument("--beam", type=_number(int, 1), default=4, help="beam size (1: greedy)")
    t.add_argument("--lenpen", type=_number(float), default=1.0, help="length penalty exponent (fairseq semantics)")
    t.add_argument("--max-len-a", type=_number(float, 0), default=DEFAULT_MAX_LEN_A,
                   help=f"max output length = a * src_len + b (default {DEFAULT_MAX_LEN_A})")
    t.add_argument("--max-len-b", type=_number(int, 1), default=DEFAULT_MAX_LEN_B,
                   help=f"(default {DEFAULT_MAX_LEN_B}; fairseq's 0 / 200 lets an undertrained model decode 200 tokens)")
    t.add_argument("--max-tokens", type=_number(int, 1), default=None, help="source tokens per decoding batch")
    t.add_argument("--batch-size", type=_number(int, 1), default=None, help="sentences per decoding batch")
    t.add_argument("--src", help="raw source text file (one segment per line) instead of --split")
    t.add_argument("--ref", help="raw reference text file for --src")
    t.add_argument("--output", help="hypotheses file (default: next to the checkpoint, hyp.<split>.txt)")
    t.add_argument("--bf16", action="store_true", help="decode under bf16 autocast (faster on CPUs with bf16)")
    i = p.add_argument_group("images")
    i.add_argument("--tta", type=_number(int, 0), default=0, help="average over N augmented copies per image (0: off)")
    return p


def main(argv: list[str] | None = None) -> int:
    configure_malloc()  # glibc: no mmap/trim churn (seqba.allocator); SEQBA_MALLOC=default turns it off
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _error(f"--device {args.device}: this torch build sees no CUDA device (use --device cpu)")
    try:
        for option, path in (("--metrics-out", args.metrics_out), ("--output", args.output)):
            if path:
                check_output(path, option)
    except UsageError as err:
        return _error(err)
    if args.ref and not args.src:
        return _error("--ref needs --src (the references of --split are read from the prepared corpus)")
    for name in ("src", "ref"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            return _error(f"--{name} file not found: {path}")
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "checkpoint_best.pt"
    try:
        cfg, state, meta = load_model_file(checkpoint)
    except SeqbaError as err:
        return _error(err)
    spec = TASKS[cfg.task]
    if spec.evaluate is None:
        return _error(f"task {cfg.task!r} has no evaluation")
    foreign = _foreign_options(args, cfg.task)
    if foreign:
        return _error(f"{', '.join(foreign)} does not apply to {checkpoint}, a {cfg.task} checkpoint")
    options = EvalOptions(checkpoint=str(checkpoint), **{k: v for k, v in vars(args).items()
                                                          if k not in ("checkpoint", "metrics_out")})
    if _option_owners()["output"][1] == cfg.task and not options.output:  # the default, checked before decoding
        options.output = str(checkpoint.parent / f"hyp.{Path(args.src).name if args.src else args.split}.txt")
    try:
        if options.output:
            check_output(options.output, "--output")
        _check_corpus(spec, cfg, meta, checkpoint)
    except (SeqbaError, OSError) as err:
        return _error(err)
    evaluate = spec.evaluate
    try:
        metrics = evaluate(cfg, state, options)
    except (FileNotFoundError, ValueError, SeqbaError, RuntimeError) as err:
        return _error(err)
    line = json.dumps({"task": cfg.task, "checkpoint": str(checkpoint), **metrics})
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

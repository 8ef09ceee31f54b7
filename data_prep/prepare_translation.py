"""Prepare a translation corpus: clean, learn a joint SentencePiece BPE, binarize (seqba.data.prepare).

One flag per ``PrepareConfig`` field (``--vocab-size`` for ``vocab_size``), so the CLI and a recipe's YAML
section never drift apart. Examples (see data_prep/README.md)::

    python data_prep/prepare_translation.py --preset multi30k --out-dir runs/data/multi30k
    python data_prep/prepare_translation.py --preset synthetic --out-dir runs/data/synthetic
    python data_prep/prepare_translation.py --train-src a.en --train-tgt a.de --valid-src v.en \\
        --valid-tgt v.de --vocab-size 8000 --out-dir runs/data/mine
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seqba.data.prepare import PrepareConfig, prepare_translation  # noqa: E402
from seqba.errors import SeqbaError  # noqa: E402


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with ``--out-dir`` plus one optional flag per ``PrepareConfig`` field."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="folder to write (built beside it, renamed at the end)")
    hints = typing.get_type_hints(PrepareConfig)
    for field in dataclasses.fields(PrepareConfig):
        kind = next((t for t in typing.get_args(hints[field.name]) if t is not type(None)), hints[field.name])
        kwargs = {"type": _parse_bool if kind is bool else kind, "default": field.default,
                  "help": f"PrepareConfig.{field.name}"}
        if typing.get_origin(kind) is typing.Literal:  # Optional[Literal[...]]: a string out of the literal's values
            kwargs.update(type=str, choices=typing.get_args(kind))
        parser.add_argument(f"--{field.name.replace('_', '-')}", **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Prepare the corpus the flags describe and print its folder. Bad options, missing or unreadable inputs and a
    folder in use end in one ``error:`` line on stderr with exit status 2 (a bad option) or 1 (the run failed)."""
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir = args.pop("out_dir")
    try:
        config = PrepareConfig(**args)
    except (SeqbaError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        out = prepare_translation(out_dir, config)
    except (SeqbaError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

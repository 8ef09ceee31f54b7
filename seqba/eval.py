"""Evaluate a trained checkpoint: ``python -m seqba.eval --checkpoint RUN/checkpoint_best.pt [options]``.

The checkpoint file (written by ``seqba.train``) holds the model weights and the recipe's config; the task named
in that config evaluates it:

* translation: batched beam search with the KV cache (``--beam 4``, greedy with ``--beam 1``), SentencePiece
  decoding, sacreBLEU on the detokenized references; hypotheses are written in input order to ``--output``.
  Source: ``--split test`` of the prepared corpus, or explicit ``--src``/``--ref`` text files.
* language_modeling: perplexity and bits per word (eval batch size 1 for test, 10 for valid, as awd-lstm-lm).
* image_classification: top-1 accuracy, with ``--tta N`` averaging the softmax over N augmented copies.

Prints a JSON line with the metrics (and writes it to ``--metrics-out`` when given).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from seqba import config as config_lib
from seqba.tasks import TASKS


def load_model_file(path: str | Path) -> tuple[config_lib.Config, dict, dict]:
    """Load ``checkpoint_{best,last}.pt``: (typed config, model state dict, the rest), ``weights_only=True``.

    Raises:
        FileNotFoundError: naming the path when it does not exist.
        ValueError: when the file is not a seqba model file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint_best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "config" not in blob or "model" not in blob:
        raise ValueError(f"{path} is not a seqba model file (expected keys 'config' and 'model')")
    cfg = config_lib.build(config_lib.upgrade(blob["config"]), str(path))
    extra = {k: v for k, v in blob.items() if k not in ("config", "model")}
    return cfg, blob["model"], extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m seqba.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint_best.pt / checkpoint_last.pt, or a run directory")
    p.add_argument("--split", default="test", help="split of the recipe's data to evaluate (default: test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--metrics-out", help="also write the metrics JSON here")
    t = p.add_argument_group("translation")
    t.add_argument("--beam", type=int, default=4, help="beam size (1: greedy)")
    t.add_argument("--lenpen", type=float, default=1.0, help="length penalty exponent (fairseq semantics)")
    t.add_argument("--max-len-a", type=float, default=0.0, help="max output length = a * src_len + b")
    t.add_argument("--max-len-b", type=int, default=200)
    t.add_argument("--max-tokens", type=int, default=None, help="source tokens per decoding batch")
    t.add_argument("--batch-size", type=int, default=None, help="sentences per decoding batch")
    t.add_argument("--src", help="raw source text file (one segment per line) instead of --split")
    t.add_argument("--ref", help="raw reference text file for --src")
    t.add_argument("--output", help="hypotheses file (default: next to the checkpoint, hyp.<split>.txt)")
    i = p.add_argument_group("images")
    i.add_argument("--tta", type=int, default=0, help="average over N augmented copies per image (0: off)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, state, _ = load_model_file(args.checkpoint)
    except (FileNotFoundError, ValueError, config_lib.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    evaluate = TASKS[cfg.task].evaluate
    if evaluate is None:
        print(f"error: task {cfg.task!r} has no evaluation", file=sys.stderr)
        return 2
    try:
        metrics = evaluate(cfg, state, args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    line = json.dumps({"task": cfg.task, "checkpoint": str(args.checkpoint), **metrics})
    print(line)
    if args.metrics_out:
        Path(args.metrics_out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train any recipe with Batch Augmentation: ``accelerate launch -m seqba.train RECIPE.yaml [key=value ...]``.

Also runs as ``python -m seqba.train RECIPE.yaml`` (one process). On a CPU-only machine,
``accelerate launch --multi_gpu --num_processes 2 -m seqba.train ...`` starts two gloo processes.

The loop is :class:`seqba.trainer.Trainer`; this module is the command line: it loads and checks the config
(every check runs before a process starts or a file is written), runs the trainer, and turns the errors a user can
act on into one ``error:`` line (exit status 2 for a bad recipe or command line, 1 for a run that failed). Set
``SEQBA_TRACEBACK=1`` to see the traceback instead.

Writes to ``output_dir``: ``config.yaml``, ``metrics.jsonl``, ``curves.png``, ``checkpoints/`` (for
``train.resume=auto``), ``checkpoint_best.pt`` and ``checkpoint_last.pt`` (what ``seqba.eval`` reads), and a
``.lock`` held while the run is alive.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import NoReturn, Sequence

import torch
import yaml

from seqba import config as config_lib
from seqba.allocator import configure_malloc
from seqba.callbacks import Callback
from seqba.errors import ConfigError, NonFiniteError, SeqbaError
from seqba.trainer import Trainer

__all__ = ["main", "train"]


def train(cfg: config_lib.Config, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Run the experiment ``cfg``; return the final validation metrics (see :class:`seqba.trainer.Trainer`)."""
    return Trainer(cfg, callbacks).train()


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: what failed and where (``no space left on device`` names the file)."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on device while writing{where or ' the run output'}; free space and rerun " \
               "(train.resume=auto continues from the last complete checkpoint)"
    return f"{err.strerror or err}{where}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """``python -m seqba.train``; returns the exit status. ``callbacks`` are extra observers of the loop."""
    configure_malloc()  # glibc: no mmap/trim churn per step (seqba.allocator); SEQBA_MALLOC=default turns it off
    parser = _Parser(prog="python -m seqba.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/transformer_wmt16_m4.yaml")
    parser.add_argument("overrides", nargs="*", default=[],
                        help="key=value overrides, e.g. ba.repeats=1 train.max_updates=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        cfg = config_lib.load(args.recipe, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        return _error(err, 2)
    if args.print_config:
        print(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        return 0
    try:
        metrics = train(cfg, callbacks)
    except ConfigError as err:
        return _error(err, 2)
    except (NonFiniteError, SeqbaError, FileNotFoundError, ConnectionError, ValueError) as err:
        return _error(err, 1)
    except OSError as err:
        return _error(describe_os_error(err), 1)
    except RuntimeError as err:
        if not _lost_a_peer(err):
            raise
        return _error("lost contact with the other processes (the first error above, or a killed process, is the "
                      "cause)", 1)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"final_valid": metrics}))
    return 0


def _lost_a_peer(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective failing because another process of the launch died (gloo and NCCL raise
    plain ``RuntimeError``s for it; newer torch ``DistError``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL"))


def _error(err: BaseException | str, status: int) -> int:
    """Print ``error: <one line>`` and return ``status``. In a multi-process launch only rank 0 prints: every rank
    raises the same error at the same point (checks run on all ranks, or on the main process and are shared,
    ``seqba.distributed.main_process_first``), and one line is enough."""
    if os.environ.get("SEQBA_TRACEBACK") == "1" and isinstance(err, BaseException):
        raise err
    if int(os.environ.get("RANK", "0")) == 0:
        message = str(err).strip().replace("\n", " ")
        print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

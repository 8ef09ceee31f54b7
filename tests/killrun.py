"""Run ``seqba.train`` and SIGKILL it at a chosen moment (fault injection for the resume tests).

    python tests/killrun.py --after-update N RECIPE [key=value ...]      killed right after update N's logs
    python tests/killrun.py --after-save N RECIPE [key=value ...]        killed once update N's checkpoint is saved
    python tests/killrun.py --at-replace K RECIPE [key=value ...]        killed at the K-th os.replace of
                                                                         seqba.checkpoint (inside a save)
    python tests/killrun.py --before-model-file NAME:N RECIPE ...        killed before writing model file NAME at
                                                                         update N (e.g. checkpoint_last.pt:4)

The hooks live here, outside the production loop: a callback for the first, a patched ``os.replace`` in the
checkpoint module for the second.
"""
import argparse
import os
import signal
import sys
import types

from seqba import checkpoint, train, trainer
from seqba.callbacks import Callback


class Kill(Callback):
    def __init__(self, after_update: int = 0, after_save: int = 0) -> None:
        self.after_update, self.after_save = after_update, after_save

    def on_update_end(self, trainer, logs) -> None:
        if trainer.state["num_updates"] == self.after_update:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint_saved(self, trainer, path) -> None:
        if trainer.state["num_updates"] == self.after_save:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_at_replace(k: int) -> None:
    calls = {"n": 0}
    real = os.replace

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    checkpoint.os = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    checkpoint.os.replace = replace


def kill_before_model_file(spec: str) -> None:
    name, step = spec.rsplit(":", 1)
    real = trainer.save_model_file

    def save(path, state, config, extra=None):
        if os.path.basename(path) == name and (extra or {}).get("step") == int(step):
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, state, config, extra)

    trainer.save_model_file = save


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--after-update", type=int, default=0)
    parser.add_argument("--after-save", type=int, default=0)
    parser.add_argument("--at-replace", type=int, default=0)
    parser.add_argument("--before-model-file", default="")
    args, rest = parser.parse_known_args()
    if args.before_model_file:
        kill_before_model_file(args.before_model_file)
    callbacks = [Kill(args.after_update, args.after_save)]
    if args.at_replace:
        kill_at_replace(args.at_replace)
    sys.exit(train.main(rest, callbacks=callbacks))

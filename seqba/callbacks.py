"""Observers of the training loop: the one way to add per-update work without editing :mod:`seqba.trainer`.

A :class:`Callback` overrides the events it needs; the trainer calls them on every rank, in the order given, at::

    on_train_begin(trainer)                  setup and resume done, before the first update of this process
    on_update_end(trainer, logs)             after each optimizer update (``logs``: this rank's sums, see below)
    on_validation_end(trainer, metrics)      after each validation (``metrics`` identical on all ranks)
    on_checkpoint_saved(trainer, path)       after a resume checkpoint is complete
    on_train_end(trainer, metrics)           after the final validation and checkpoint

A callback with state that must survive a kill (an open averaging window) returns it from ``state_dict()``
(plain floats, this rank's); the trainer stores it in every resume checkpoint, under the callback's class name,
and hands it back to ``load_state_dict`` on resume, before ``on_train_begin``.

Through ``trainer`` a callback reads the loop position (``trainer.state``), the config, the model, the
optimizer, the task and the accelerator. A callback that calls a collective (``accelerator.reduce``) must do so
on every rank at the same events, as :class:`MetricsLogger` does.

``logs`` of an update are sums over the update's batches on this rank: ``loss_sum``/``nll_sum`` (nats),
``sample_size`` (target tokens, words or images of the M·B rows), ``*_count`` counters (tokens, distinct tokens,
...), plus ``gnorm`` (before clipping), ``lr`` and ``seconds`` (wall time of the update, data loading included).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from seqba.metrics import perplexity
from seqba.plots import plot_curves

# The observed object is a seqba.trainer.Trainer; it is not imported here (the trainer imports this module).
Trainer = Any

__all__ = ["Callback", "MetricsLogger", "ProgressBar", "TrackerLogger"]


class Callback:
    """Base observer; every event does nothing by default."""

    def on_train_begin(self, trainer: Trainer) -> None:
        pass

    def on_train_batch(self, trainer: Trainer, batch: Any, state: Any) -> None:
        """Before the forward of each expanded batch of an update (``train.update_freq`` per update): ``batch`` as
        ``task.expand`` made it, ``state`` what the task carries into it (:meth:`~seqba.tasks.base.Task.batch_state`)."""

    def on_update_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        pass

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint_saved(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any] | None:
        """This rank's state to checkpoint (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned at the checkpoint being resumed."""


class MetricsLogger(Callback):
    """Writes ``metrics.jsonl`` (one JSON object per ``train.log_interval`` updates, one for the updates left at the
    end of training, and one per validation) and redraws ``curves.png``, on the main process.

    A training record holds ``step``, ``epoch``, ``loss``/``nll`` (nats per target token or word), ``ppl``,
    ``lr``, ``gnorm`` (means over the window), and for every ``<name>_count`` counter ``<name>_per_step`` and
    ``<name>_per_s`` (summed over ranks). A validation record holds ``valid_<metric>``. On resume, records after
    the checkpoint's update (written by the killed run) and lines torn by a kill are dropped first, and the window
    open at the checkpoint (the updates since the last record) is restored, so the first record after a resume
    averages the same updates as an uninterrupted run's.
    """

    def __init__(self, output_dir: str | Path, log_interval: int) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.png = Path(output_dir) / "curves.png"
        self.log_interval = log_interval
        self.window: dict[str, float] = {}

    def on_train_begin(self, trainer: Trainer) -> None:
        self.enabled = trainer.accelerator.is_main_process
        self.truncate(trainer.state["num_updates"])

    def state_dict(self) -> dict[str, Any]:
        return {"window": dict(self.window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = {k: float(v) for k, v in state.get("window", {}).items()}

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` and torn lines (atomic rewrite)."""
        if not (self.enabled and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a write cut short by a kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)

    def on_update_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.window["updates"] = self.window.get("updates", 0.0) + 1.0
        if trainer.state["num_updates"] % self.log_interval == 0:
            self._flush(trainer)

    def _flush(self, trainer: Trainer) -> None:
        record = {"step": trainer.state["num_updates"], "epoch": trainer.state["epoch"],
                  **summarise(trainer.accelerator, self.window)}
        self.write(record)
        trainer.last_train_record = record
        self.window = {}

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """The updates since the last record (``train.log_interval`` not dividing the run) get a record too."""
        if self.window.get("updates"):
            self._flush(trainer)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.write({"step": trainer.state["num_updates"], "epoch": trainer.state["epoch"],
                    **{f"valid_{k}": v for k, v in metrics.items()}})
        if self.enabled and self.path.exists():
            plot_curves(self.path, self.png)


def summarise(accelerator: Any, window: dict[str, float]) -> dict[str, float]:
    """Turn summed per-update logs of all ranks into per-token means and rates (a collective: all ranks call it).

    ``loss``/``nll``/``correct``/``consistency`` are their ``*_sum`` over ``sample_size`` (tasks log
    ``consistency_sum`` times M, so ``consistency`` is the term per distinct token, word or image); ``ppl = exp(nll)``;
    ``lr``/``gnorm`` are
    means over updates; every ``*_count`` becomes a per-update mean and a ``*_per_s`` rate over this rank's
    ``seconds``.
    """
    local = {"updates", "seconds", "lr", "gnorm"}  # identical on every rank (or this rank's own clock)
    keys = sorted(k for k in window if k not in local)
    values = torch.tensor([window[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    summed = dict(zip(keys, accelerator.reduce(values, "sum").tolist()))
    updates = max(window.get("updates", 1.0), 1.0)
    seconds = max(window.get("seconds", 0.0), 1e-9)
    out: dict[str, float] = {}
    size = summed.get("sample_size", 0.0)
    if size:
        out["loss"] = summed.get("loss_sum", 0.0) / size
        if "nll_sum" in summed:
            out["nll"] = summed["nll_sum"] / size
            out["ppl"] = perplexity(out["nll"])
        for k in ("correct", "accuracy", "consistency"):
            if f"{k}_sum" in summed:
                out[k] = summed[f"{k}_sum"] / size
    out["lr"] = window.get("lr", 0.0) / updates
    out["gnorm"] = window.get("gnorm", 0.0) / updates
    for k, v in summed.items():
        if k.endswith("_count"):
            name = k[: -len("_count")]
            out[f"{name}_per_step"] = v / updates
            out[f"{name}_per_s"] = v / seconds
    return out


class ProgressBar(Callback):
    """A tqdm bar over updates on the main process, with the last logged loss and learning rate."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        show = self.enabled and trainer.accelerator.is_main_process
        self.bar = tqdm(total=trainer.total_updates, initial=trainer.state["num_updates"], disable=not show,
                        desc=trainer.cfg.task, dynamic_ncols=True)

    def on_update_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.bar.update(1)
        record = getattr(trainer, "last_train_record", None)
        if record and record["step"] == trainer.state["num_updates"]:
            self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", lr=f"{logs['lr']:.2e}")

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()


class TrackerLogger(Callback):
    """Sends the records of :class:`MetricsLogger` to the experiment trackers of ``train.log_with`` through
    ``accelerator.log`` (same keys, ``step`` as the step), after ``init_trackers`` with the flattened config.

    Must come after the :class:`MetricsLogger` in the callback list (it forwards that logger's records).
    """

    def __init__(self, project: str) -> None:
        self.project = project

    def on_train_begin(self, trainer: Trainer) -> None:
        trainer.accelerator.init_trackers(self.project, config=_flatten(trainer.config_dict))

    def on_update_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        record = getattr(trainer, "last_train_record", None)
        if record and record["step"] == trainer.state["num_updates"]:
            self._log(trainer, record)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._log(trainer, {"step": trainer.state["num_updates"], **{f"valid_{k}": v for k, v in metrics.items()}})

    @staticmethod
    def _log(trainer: Trainer, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        trainer.accelerator.log(values, step=int(record["step"]))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"ba": {"repeats": 4}}`` -> ``{"ba.repeats": 4}``; lists and None become strings (trackers want scalars)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out

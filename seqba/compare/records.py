"""What a finished run's ``metrics.jsonl`` says: updates, samples seen, rows computed, training time, curves.

A training record (``seqba.callbacks.MetricsLogger``) covers the updates since the previous one and holds, for
every counter of the task, ``<name>_per_step`` (mean per update) and ``<name>_per_s`` (per second of update wall
time, data loading included, validation and checkpointing excluded). So a window of ``n`` updates took
``n * per_step / per_s`` seconds, and its counts are ``n * per_step``. The counters read here are the task's
unit (``TaskSpec.batch_unit``: e.g. tokens, words, images): ``UNIT`` (rows computed, M·B per update) and
``distinct_UNIT`` (distinct samples, B per update).

Training time here is that sum (the runs carry no time stamps; see :func:`summarise`). Updates after the last
training record (when ``train.log_interval`` does not divide the run) are counted at the last record's rates.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunSummary", "read_records", "summarise", "validation_curve", "validation_losses"]



@dataclass
class RunSummary:
    """Totals of one run (units: the task's ``batch_unit``; seconds of training updates)."""

    updates: int
    distinct_seen: float
    computed: float
    train_seconds: float
    model_flops: float | None = None  # forward + backward model FLOPs of the training updates (None: not logged)

    @property
    def seconds_per_update(self) -> float:
        return self.train_seconds / max(self.updates, 1)

    @property
    def throughput(self) -> float:
        """Rows computed per second of training (tokens/s, words/s or images/s)."""
        return self.computed / self.train_seconds if self.train_seconds else 0.0


def read_records(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` in order (lines torn by a kill are skipped; missing file: [])."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _training(records: list[dict], unit: str) -> list[dict]:
    return [r for r in records if f"{unit}_per_s" in r and r.get(f"{unit}_per_s")]


def _timeline(records: list[dict], unit: str) -> list[tuple[int, float, float, float]]:
    """(step, cumulative seconds, cumulative distinct, cumulative computed) after each training record."""
    out, prev, seconds, distinct, computed = [(0, 0.0, 0.0, 0.0)], 0, 0.0, 0.0, 0.0
    for r in _training(records, unit):
        n = r["step"] - prev
        prev = r["step"]
        seconds += n * r[f"{unit}_per_step"] / r[f"{unit}_per_s"]
        distinct += n * r.get(f"distinct_{unit}_per_step", 0.0)
        computed += n * r[f"{unit}_per_step"]
        out.append((prev, seconds, distinct, computed))
    return out


def summarise(records: list[dict], unit: str) -> RunSummary:
    """Totals of a run from its records (``unit``: the task's ``batch_unit``).

    ``updates`` is the largest ``step`` of any record (the final validation record carries the last update);
    ``model_flops`` sums the logged ``model_flops_per_step`` (:mod:`seqba.flops`' convention), None if not logged.
    """
    updates = max((r.get("step", 0) for r in records), default=0)
    line = _timeline(records, unit)
    step, seconds, distinct, computed = line[-1]
    training = _training(records, unit)
    if training and updates > step:  # the unlogged tail, at the last window's rates
        last, n = training[-1], updates - step
        seconds += n * last[f"{unit}_per_step"] / last[f"{unit}_per_s"]
        distinct += n * last.get(f"distinct_{unit}_per_step", 0.0)
        computed += n * last[f"{unit}_per_step"]
    return RunSummary(int(updates), distinct, computed, seconds, _model_flops(training, int(updates)))


def _model_flops(training: list[dict], updates: int) -> float | None:
    """Model FLOPs of the run's updates from ``model_flops_per_step`` (every training record must log it; the
    unlogged tail at the last record's rate); None when the task logs none."""
    if not training or any("model_flops_per_step" not in r for r in training):
        return None
    flops, prev = 0.0, 0
    for r in training:
        flops += (r["step"] - prev) * r["model_flops_per_step"]
        prev = r["step"]
    return flops + max(updates - prev, 0) * training[-1]["model_flops_per_step"]


def validation_curve(records: list[dict], unit: str, metric: str = "loss"
                     ) -> tuple[str, list[tuple[int, float, float]]] | None:
    """``(valid_METRIC, [(update, training seconds, value), ...])`` of the validation ``metric`` (the task's
    ``curve_metric``; ``valid_loss`` when the records have no such key), or None.

    The seconds at a validation are interpolated linearly between the training records around it.
    """
    metric = next((m for m in (f"valid_{metric}", "valid_loss") if any(m in r for r in records)), None)
    if metric is None:
        return None
    line = _timeline(records, unit)
    points = {}
    for r in records:
        if metric in r:
            points[r["step"]] = (r["step"], _seconds_at(line, r["step"]), r[metric])
    return metric, [points[s] for s in sorted(points)]


def validation_losses(records: list[dict]) -> dict[str, float | int]:
    """The run's validation loss: ``best_valid_loss``, the ``best_valid_update`` that reached it (the first, on a
    tie) and ``final_valid_loss`` (the last validation); ``{}`` when it never validated.

    The loss is the task's ``valid_loss`` (its ``validate``'s ``loss``: e.g. label-smoothed cross-entropy per
    target token, NLL per word, cross-entropy per image), the curve a regulariser study reads first.
    """
    points = [(r["step"], r["valid_loss"]) for r in records if "valid_loss" in r]
    if not points:
        return {}
    best_update, best = min(points, key=lambda p: (p[1], p[0]))
    return {"best_valid_loss": best, "best_valid_update": best_update, "final_valid_loss": points[-1][1]}


def _seconds_at(line: list[tuple[int, float, float, float]], step: int) -> float:
    for (s0, t0, *_), (s1, t1, *_) in zip(line, line[1:]):
        if s0 <= step <= s1:
            return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
    if len(line) >= 2:  # past the last record: extrapolate at the last window's speed
        (s0, t0, *_), (s1, t1, *_) = line[-2], line[-1]
        return t1 + (t1 - t0) / max(s1 - s0, 1) * (step - s1)
    return 0.0

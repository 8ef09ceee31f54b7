"""The observers a recipe asks for, built from its ``train:`` section for :class:`seqba.trainer.Trainer`.

Always the metrics log and the progress bar (:mod:`seqba.callbacks`); an experiment tracker with
``train.log_with``; gradient statistics across the M copies (:class:`seqba.gradstats.GradStats`) with
``train.grad_stats_interval``. The trainer knows observers only as :class:`~seqba.callbacks.Callback` objects;
this module is the one place that knows which recipe key turns on which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from seqba.callbacks import Callback, MetricsLogger, ProgressBar, TrackerLogger
from seqba.gradstats import GradStats

__all__ = ["recipe_callbacks"]


def recipe_callbacks(train_cfg: Any, output_dir: Path) -> list[Callback]:
    """The observers of a run in the order they are called: metrics log, progress bar, tracker, gradient statistics.

    Args:
        train_cfg: the recipe's ``train:`` section (:class:`seqba.config.TrainConfig`).
        output_dir: the run folder (``metrics.jsonl``, curves); its name is the tracker's run name.
    """
    callbacks: list[Callback] = [MetricsLogger(output_dir, train_cfg.log_interval), ProgressBar(train_cfg.progress_bar)]
    if train_cfg.log_with != "none":
        callbacks.append(TrackerLogger(output_dir.name))
    if train_cfg.grad_stats_interval:  # gradient statistics across the M copies (seqba.gradstats)
        callbacks.append(GradStats(train_cfg.grad_stats_interval))
    return callbacks

"""``curves.png``: the validation metric of every arm against updates and against training wall-clock.

Per arm, the seeds' validation values at each update give a mean line and a min–max band. The wall-clock axis is
the cumulative seconds of training updates (from the logged rates, see :mod:`seqba.compare.records`), averaged
over the seeds at each validation; validation and checkpointing time are not on it.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from seqba.compare.records import read_records, validation_curve

__all__ = ["arm_curves", "plot_study"]


def arm_curves(study, arm: str) -> tuple[str, int, list[tuple[int, float, float, float, float]]] | None:
    """``(metric, seeds, [(update, mean seconds, mean, min, max), ...])`` over the seeds of ``arm`` that have
    validation records, or None."""
    metric, by_step, seeds = None, {}, 0
    for seed in study.seeds:
        curve = validation_curve(read_records(study.run_dir(arm, seed)), study.unit)
        if curve is None:
            continue
        metric, seeds = curve[0], seeds + 1
        for step, seconds, value in curve[1]:
            by_step.setdefault(step, []).append((seconds, value))
    if metric is None:
        return None
    points = []
    for step in sorted(by_step):
        seconds = [s for s, _ in by_step[step]]
        values = [v for _, v in by_step[step]]
        points.append((step, statistics.fmean(seconds), statistics.fmean(values), min(values), max(values)))
    return metric, seeds, points


def plot_study(study, arms: list[str], png: str | Path) -> bool:
    """Draw the two panels for ``arms`` into ``png`` (atomically); False when no arm has a validation record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {arm: c for arm in arms if (c := arm_curves(study, arm)) is not None}
    if not curves:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for arm, (metric, seeds, points) in curves.items():
        steps, seconds, mean, low, high = (list(v) for v in zip(*points))
        for ax, xs in ((axes[0][0], steps), (axes[0][1], seconds)):
            (line,) = ax.plot(xs, mean, label=f"{arm} (n={seeds})", marker="." if len(xs) < 30 else None)
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    metric = next(iter(curves.values()))[0]
    for ax, xlabel in zip(axes[0], ("update", "training seconds (updates only)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if metric.endswith("ppl"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{Path(study.recipe).stem}: validation {metric.removeprefix('valid_')} (mean, min–max over seeds)")
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png)
    return True

"""``curves.png``: the validation metric of every arm against updates and against training wall-clock.

Per arm, the seeds' validation values at each update give a mean line and a min–max band. The wall-clock axis is
the cumulative seconds of training updates (from the logged rates, see :mod:`seqba.compare.records`), averaged
over the seeds at each validation; validation and checkpointing time are not on it.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from seqba.compare.records import read_records, validation_curve
from seqba.compare.runs import is_trained
from seqba.plots import save_figure

__all__ = ["arm_curves", "plot_study"]


def arm_curves(study, arm: str) -> tuple[str, int, list[tuple[int, float, float, float, float]]] | None:
    """``(metric, seeds, [(update, mean seconds, mean, min, max), ...])`` over the finished seeds of ``arm`` (those
    in ``results.csv``; a run still training is left out) that have validation records, or None.

    Seeds validated at different updates (``equal_time``: each seed has its own update count) are interpolated
    linearly onto the union of their updates, each within its own first..last validation only.
    """
    metric, curves = None, []
    for seed in study.seeds:
        if not is_trained(study.run_dir(arm, seed)):
            continue
        curve = validation_curve(read_records(study.run_dir(arm, seed)), study.unit, study.spec.curve_metric)
        if curve is not None and curve[1]:
            metric = curve[0]
            curves.append(curve[1])
    if metric is None:
        return None
    points = []
    for step in sorted({p[0] for c in curves for p in c}):
        seconds, values = [], []
        for c in curves:
            if c[0][0] <= step <= c[-1][0]:
                seconds.append(_interp(step, [p[0] for p in c], [p[1] for p in c]))
                values.append(_interp(step, [p[0] for p in c], [p[2] for p in c]))
        points.append((step, statistics.fmean(seconds), statistics.fmean(values), min(values), max(values)))
    return metric, len(curves), points


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Linear interpolation of ``ys`` at ``x`` (``xs`` increasing, ``xs[0] <= x <= xs[-1]``)."""
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]


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
    save_figure(fig, png)
    return True

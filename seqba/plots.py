"""Learning curves from ``metrics.jsonl`` as a PNG (matplotlib, headless)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_curves", "save_figure"]

#: training keys drawn besides every ``valid_*`` metric (``grad_*``: seqba.gradstats, train.grad_stats_interval)
CURVES = ("loss", "nll", "ppl", "consistency", "grad_norm_full", "grad_norm_copy_mean", "grad_cos_copies",
          "grad_var_copies")


def plot_curves(jsonl: str | Path, png: str | Path) -> None:
    """Plot the training keys in ``CURVES`` and every ``valid_*`` metric against ``step``; one panel per metric.

    Lines without a ``step`` or a number for a metric are skipped. The PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[float], list[float]]] = {}
    for line in Path(jsonl).read_text().splitlines():
        record = json.loads(line)
        step = record.get("step")
        for key, value in record.items():
            if key == "step" or not isinstance(value, (int, float)):
                continue
            if key in CURVES or key.startswith("valid_"):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
    if not series:
        return
    keys = sorted(series, key=lambda k: (k.startswith("valid_"), k))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs, ys = series[key]
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_title(key)
        ax.set_xlabel("update")
        if key.endswith("ppl") and max(ys) / max(min(ys), 1e-9) > 20:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png)


def save_figure(fig, png: str | Path, dpi: int = 100) -> None:
    """Write matplotlib figure ``fig`` to ``png`` atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    png = Path(png)
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(png)

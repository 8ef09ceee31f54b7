"""BA analysis tools: ``python -m seqba.analyze {grad-correlation, grad-norm} ...`` (Hoffer et al. 2020, Table 1,
Fig. 1).

``grad-correlation`` (Table 1): per-sample gradients of ``--samples`` samples of ``--split``, each in ``--copies`` M
copies, and the Pearson ρ (:func:`seqba.gradstats.pearson`, over all parameter entries, or per named parameter
with ``--by-layer``) between

* ``copies``: two copies of one sample (all M(M-1)/2 pairs per sample): they differ by augmentation, by dropout
  masks, or both, as the family makes them;
* ``clean_vs_copy`` (adapters with ``clean_first``, e.g. images): the unaugmented sample x and each of its M
  augmented copies T(x), the paper's ρ(x, T(x));
* ``different``: copy 0 of a sample and copy 0 of the previous one (samples without classes), or for samples with
  classes ``same_class`` / ``different_class``: the unaugmented sample and the unaugmented last earlier sample of
  the same / of another class (the paper's ρ(z, w) is two different images).

Prints the median and interquartile range per relation, Table-1 style, and writes JSON (``--out``; default beside
the checkpoint). ``--init`` measures a freshly initialised model (the recipe's seed), as Table 1's first column.

A family provides its model, samples and per-copy gradients as a :class:`~seqba.tasks.base.GradAdapter`
(``TaskSpec.analysis``), computed with :func:`seqba.gradstats.per_sample_grads` (``vmap(grad)`` or a loop of
backward passes); each adapter's docstring (the ``analysis`` of a task module's ``SPEC``) says how.

``grad-norm`` (Figure 1): the gradient L2 norm (``gnorm`` of metrics.jsonl, or any ``--key``) against updates for
several runs, smoothed over ``--smooth`` logged points, one line per run labelled by its M (``config.yaml``).

Examples::

    python -m seqba.analyze grad-correlation --checkpoint runs/resnet_mnist_m4/checkpoint_last.pt --samples 100
    python -m seqba.analyze grad-correlation --checkpoint runs/resnet_mnist_m4/checkpoint_last.pt --init
    python -m seqba.analyze grad-norm runs/m1 runs/m2 runs/m4 runs/m8 --out docs/fig1.png

Errors (bad arguments, unreadable checkpoints or data) are one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor

from seqba import config as config_lib
from seqba.checkpoint import load_model_file
from seqba.errors import SeqbaError
from seqba.eval import check_output
from seqba.gradstats import centred_unit, flatten_grads
from seqba.tasks import TASKS
from seqba.tasks.base import GradAdapter

__all__ = ["main", "grad_correlation", "summarise", "read_series"]


#: the relations of grad-correlation, in table order
RELATIONS = ("clean_vs_copy", "copies", "different", "same_class", "different_class")


# -- grad-correlation -------------------------------------------------------------------------------------------


def summarise(values: list[float]) -> dict[str, float | int | None]:
    """``count``, ``median``, ``q25``, ``q75``, ``mean`` of the finite values (None when there are none)."""
    v = np.array([x for x in values if math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"count": 0, "median": None, "q25": None, "q75": None, "mean": None}
    q25, median, q75 = np.percentile(v, [25, 50, 75])
    return {"count": int(len(v)), "median": float(median), "q25": float(q25), "q75": float(q75),
            "mean": float(v.mean())}


def grad_correlation(adapter: GradAdapter, split: str, samples: int, copies: int, by_layer: bool = False,
                     seed: int = 0) -> dict[str, Any]:
    """Pearson ρ per relation (module docstring) over ``samples`` samples in ``copies`` copies each.

    Returns ``{"relations": {relation: summarise(ρ)}, "by_layer": {param: {relation: summarise(ρ)}}}`` (the
    latter only with ``by_layer``). Keeps O(M + classes) gradient vectors in memory, never all of them.

    Raises:
        ValueError: ``copies`` < 2 or ``samples`` < 2.
    """
    if copies < 2 or samples < 2:
        raise ValueError(f"need --copies >= 2 and --samples >= 2, got {copies} and {samples}")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout masks and augmentations
    rho: dict[str, dict[str, list[float]]] = {}
    previous: dict[str, Tensor] = {}  # group -> centred unit gradient of the previous sample's copy 0
    by_class: dict[int, dict[str, Tensor]] = {}  # class -> that of the last sample of the class

    def add(group: str, relation: str, a: Tensor, b: Tensor) -> None:
        rho.setdefault(group, {}).setdefault(relation, []).append(float((a * b).sum().clamp(-1, 1)))

    first = int(adapter.clean_first)  # row of the first copy
    for label, sample in adapter.samples(split, samples, rng):
        grads = adapter.copy_grads(sample, copies)
        groups = {"all": flatten_grads(grads)}
        if by_layer:
            groups.update({k: g.reshape(g.shape[0], -1) for k, g in grads.items()})
        units = {k: centred_unit(m) for k, m in groups.items()}  # (first + M, P_group) float64
        for k, u in units.items():
            for a in range(first, first + copies):
                if first:
                    add(k, "clean_vs_copy", u[0], u[a])
                for b in range(a + 1, first + copies):
                    add(k, "copies", u[a], u[b])
            if label is None and k in previous:
                add(k, "different", u[0], previous[k])
            if label is not None:
                if label in by_class:
                    add(k, "same_class", u[0], by_class[label][k])
                other = [c for c in by_class if c != label]  # by_class is in order of last appearance
                if other:
                    add(k, "different_class", u[0], by_class[other[-1]][k])
        previous = {k: u[0] for k, u in units.items()}  # copy 0, or the unaugmented image
        if label is not None:
            by_class.pop(label, None)
            by_class[label] = previous  # insertion order: most recent class last
    def table(rels: dict[str, list[float]]) -> dict[str, dict]:
        return {r: summarise(rels[r]) for r in RELATIONS if r in rels}

    out: dict[str, Any] = {"relations": table(rho.get("all", {}))}
    if by_layer:
        out["by_layer"] = {k: table(rels) for k, rels in rho.items() if k != "all"}
    return out


def format_table(result: dict[str, Any], title: str) -> str:
    """The relations of :func:`grad_correlation` as a Markdown table: median [q25, q75] and pair count."""
    lines = [title, "", "| relation | pairs | median ρ | [q25, q75] |", "|---|---:|---:|---|"]
    for relation, s in result["relations"].items():
        if s["count"]:
            lines.append(f"| {relation} | {s['count']} | {s['median']:.3f} | [{s['q25']:.3f}, {s['q75']:.3f}] |")
    return "\n".join(lines)


# -- grad-norm --------------------------------------------------------------------------------------------------


def read_series(run: Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in ``run/metrics.jsonl`` (or the given file); records without it are skipped."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    steps, values = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        value = record.get(key)
        if isinstance(value, (int, float)) and "step" in record:
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def run_label(run: Path) -> str:
    """``M=<ba.repeats>`` from the run's config.yaml, else the folder name."""
    folder = run if run.is_dir() else run.parent
    try:
        import yaml
        return f"M={int(yaml.safe_load((folder / 'config.yaml').read_text())['ba']['repeats'])}"
    except (OSError, KeyError, TypeError, ValueError):
        return folder.name


def plot_grad_norm(runs: list[Path], keys: list[str], out: Path, smooth: int) -> dict[str, dict]:
    """One panel per key, one line per run (moving average over ``smooth`` points, raw points faint); log y.

    Returns {label: {key: {"first", "last", "mean"} of the raw values}}. Raises ``ValueError`` when no run has a key.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    summary: dict[str, dict] = {}
    for ax, key in zip(axes[0], keys):
        found = False
        for run in runs:
            steps, values = read_series(run, key)
            if not values:
                continue
            found = True
            label = run_label(run)
            kernel = np.ones(min(smooth, len(values))) / min(smooth, len(values))
            smoothed = np.convolve(values, kernel, mode="valid")
            line, = ax.plot(steps[len(steps) - len(smoothed):], smoothed, label=label)
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
            summary.setdefault(label, {})[key] = {"first": values[0], "last": values[-1],
                                                  "mean": float(np.mean(values))}
        if not found:
            raise ValueError(f"no run has {key!r} in its metrics.jsonl")
        ax.set_yscale("log")
        ax.set_xlabel("update")
        ax.set_title(f"{key} (moving average over {smooth} logged points)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return summary


# -- CLI --------------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m seqba.analyze", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("grad-correlation", help="Table 1: Pearson ρ of per-sample gradients")
    c.add_argument("--checkpoint", help="model file (checkpoint_best/last.pt) or run folder")
    c.add_argument("--recipe", help="YAML recipe instead of --checkpoint (implies --init)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    c.add_argument("--init", action="store_true", help="freshly initialised weights (the recipe's seed)")
    c.add_argument("--samples", type=_positive, default=100)
    c.add_argument("--copies", type=_positive, default=None, help="M (default: the recipe's ba.repeats, at least 2)")
    c.add_argument("--split", default="valid", help="split of the recipe's data: valid, test or train")
    c.add_argument("--by-layer", action="store_true", help="also ρ per named parameter")
    c.add_argument("--bn-batches", type=_positive, default=20,
                   help="with --init: training batches that calibrate the fresh model (BatchNorm statistics)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--out", help="JSON output (default: grad_correlation_<split>[_init].json beside the checkpoint)")
    n = sub.add_parser("grad-norm", help="Figure 1: gradient norm against updates for several runs")
    n.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    n.add_argument("--out", required=True, help="PNG to write")
    n.add_argument("--key", action="append", default=None, help="metrics key(s) to plot (default: gnorm)")
    n.add_argument("--smooth", type=_positive, default=5, help="moving-average window in logged points")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
    try:
        return _correlation(args) if args.command == "grad-correlation" else _grad_norm(args)
    except (SeqbaError, OSError, ValueError, RuntimeError) as err:
        if os.environ.get("SEQBA_TRACEBACK") == "1":
            raise
        print(f"error: {str(err).strip()}".replace("\n", " "), file=sys.stderr)
        return 2


def _correlation(args: argparse.Namespace) -> int:
    if bool(args.checkpoint) == bool(args.recipe):
        raise ValueError("give exactly one of --checkpoint and --recipe")
    if args.checkpoint:
        path = Path(args.checkpoint)
        path = path / "checkpoint_best.pt" if path.is_dir() else path
        cfg, state, extra = load_model_file(path)
        if args.set:
            tree = config_lib.to_dict(cfg)
            for override in args.set:
                config_lib.apply_override(tree, override)
            cfg = config_lib.build(tree, str(path))
    else:
        path, extra = None, {}
        cfg, state = config_lib.load(args.recipe, args.set), None
    init = args.init or state is None
    out = Path(args.out) if args.out else (path.parent / f"grad_correlation_{args.split}{'_init' if init else ''}.json"
                                          if path else None)
    if out is not None:
        check_output(out, "--out")  # before the gradients, not after
    adapter_class = TASKS[cfg.task].analysis
    if adapter_class is None:
        raise SeqbaError(f"task {cfg.task!r} has no gradient analysis (its TaskSpec.analysis is None)")
    adapter = adapter_class(cfg, None if init else state, torch.device(args.device))
    if init:
        adapter.calibrate(args.bn_batches, np.random.default_rng(args.seed + 1))
    copies = args.copies or max(cfg.ba.repeats, 2)
    result = grad_correlation(adapter, args.split, args.samples, copies, args.by_layer, args.seed)
    step = 0 if init else extra.get("step")
    result = {"task": cfg.task, "checkpoint": str(path) if path else None, "recipe": args.recipe, "init": init,
              "step": step, "split": args.split, "samples": args.samples, "copies": copies, "seed": args.seed,
              **result}
    print(format_table(result, f"{cfg.task}, {'init' if init else f'update {step}'}, {args.split}, "
                               f"{args.samples} samples x M={copies}"))
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


def _grad_norm(args: argparse.Namespace) -> int:
    check_output(args.out, "--out", make_folder=True)  # the figure's folder is created, as plot_grad_norm does
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / "metrics.jsonl" if run.is_dir() else run).is_file():
            raise FileNotFoundError(f"no metrics.jsonl in {run}")
    summary = plot_grad_norm(runs, args.key or ["gnorm"], Path(args.out), args.smooth)
    print(json.dumps({"out": args.out, "runs": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

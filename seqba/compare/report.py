"""A study's ``results.csv`` (one row per run) and ``table.md`` (Table 2 of Hoffer et al. 2020: arms x metrics).

``results.csv`` columns (``UNIT`` = the task's ``TaskSpec.batch_unit``: tokens, words, images, ...)::

    arm, seed
    updates                       optimizer updates of the run
    epochs_seen                   updates / updates of one epoch of THIS arm (passes over the distinct data)
    distinct_UNIT_seen            distinct samples trained on (B per update, in the task's unit)
    UNIT_computed                 rows computed (M·B per update): the compute
    train_seconds                 seconds of training updates, from the logged rates (no validation, no saving)
    wall_seconds                  wall time of the process that finished the run (startup and validation included)
    UNIT_per_s                    UNIT_computed / train_seconds
    model_flops                   forward + backward model FLOPs of the training updates, as the task logs them
                                  (:mod:`seqba.flops`' count: 6 x matmul parameters x rows, plus attention); empty
                                  when the task logs none
    best_valid_loss               lowest validation loss of the run, and best_valid_update where it was reached
    final_valid_loss              the last validation loss (see :func:`seqba.compare.records.validation_losses`)
    checkpoint_update             the update of the checkpoint the test metrics come from
                                  (``TaskSpec.report_checkpoint``: the best by the task's own validation metric,
                                  e.g. NLL for translation, which need not be at best_valid_update); empty for
                                  evaluations that did not record it
    SET_METRIC                    every test metric (``TaskSpec.test_metrics``) on every test set (``test`` = the
                                  recipe's test split)
    SET_METRIC_p                  the family's significance test (``TaskSpec.significance``, on its METRIC): p-value
                                  against the baseline arm (fixed_steps, or ``--baseline``) of the same seed;
                                  left out when no run wrote per-example outputs

``table.md``: per arm, ``n`` (finished runs), mean updates / epochs seen / training seconds, the best validation
loss (mean ± std), and for every test
metric the mean ± sample standard deviation over seeds (``–`` with one seed), the best mean in bold; the
p-values of each seed; and the paper's figure beside its three arms when the recipe is one of the paper's.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from seqba.compare.arms import is_baseline, timed_arm
from seqba.compare.records import read_records, summarise, validation_losses
from seqba.compare.runs import is_trained, read_done
from seqba.compare.significance import BASELINE
from seqba.tasks.spec import Metric

__all__ = ["PAPER", "collect_rows", "write_csv", "format_table", "equal_time_counterparts", "equal_time_verdict"]

#: How the table shows the best validation loss (beside the task's test metrics).
VALID_LOSS = Metric("best_valid_loss", higher_is_better=False, digits=4)

#: Hoffer et al. 2020, Table 2 (fixed #steps / fixed #samples / BA), keyed by the BA recipe's file name:
#: (metric on the test split, {arm: figure}, how the table names the figure).
PAPER = {
    "transformer_wmt16_m4": ("bleu", {"fixed_steps": 26.88, "fixed_samples": 27.13, "ba": 27.49}, "BLEU"),
    "awd_lstm_ptb_m10": ("ppl", {"fixed_steps": 58.8, "fixed_samples": 58.8, "ba": 58.6}, "test ppl"),
    "resnet44_cifar10_m40": ("accuracy", {"fixed_steps": 93.7, "fixed_samples": 93.8, "ba": 95.43}, "accuracy %"),
}


def _eval(run_dir: Path, name: str) -> dict:
    try:
        return json.loads((run_dir / f"eval.{name}.json").read_text())
    except (OSError, ValueError):
        return {}


def collect_rows(study, arms: list[str], pvalues: dict | None = None, baseline: str = BASELINE) -> list[dict]:
    """One dict per trained (arm, seed) of ``arms``, in the order of ``arms`` then seeds (columns as above;
    ``SET_METRIC_p`` against ``baseline``)."""
    unit, pvalues = study.unit, pvalues or {}
    rows = []
    for arm in arms:
        for seed in study.seeds:
            run_dir = study.run_dir(arm, seed)
            if not is_trained(run_dir):
                continue
            records = read_records(run_dir)
            s, done = summarise(records, unit), read_done(run_dir)
            per_epoch = study.updates_per_epoch.get(arm)
            row = {"arm": arm, "seed": seed, "updates": s.updates,
                   "epochs_seen": round(s.updates / per_epoch, 3) if per_epoch else "",
                   f"distinct_{unit}_seen": round(s.distinct_seen), f"{unit}_computed": round(s.computed),
                   "train_seconds": round(s.train_seconds, 2),
                   "wall_seconds": done.get("wall_seconds", ""), "machine": done.get("machine", ""),
                   f"{unit}_per_s": round(s.throughput, 1),
                   "model_flops": float(f"{s.model_flops:.4g}") if s.model_flops is not None else ""}
            row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in validation_losses(records).items()})
            evals = {test.name: _eval(run_dir, test.name) for test in study.test_sets}
            row["checkpoint_update"] = next((e["update"] for e in evals.values() if isinstance(e.get("update"), int)),
                                            "")
            significance = study.spec.significance
            for test in study.test_sets:
                metrics = evals[test.name]
                for metric in study.spec.test_metrics:
                    if metric.name in metrics:
                        row[f"{test.name}_{metric.name}"] = metrics[metric.name]
                if significance is not None and baseline in arms:
                    p = pvalues.get((test.name, arm, seed))
                    row[f"{test.name}_{significance.metric}_p"] = round(p, 4) if p is not None else ""
            rows.append(row)
    # Columns no run fills (evaluations made before seqba.eval recorded the update or wrote per-example outputs)
    # are left out rather than shown empty.
    for key in {k for row in rows for k in row if k in ("checkpoint_update", "machine") or k.endswith("_p")}:
        if all(row.get(key, "") == "" for row in rows):
            for row in rows:
                row.pop(key, None)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Write ``rows`` with the union of their keys as columns (first-seen order); missing cells empty."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> tuple[float, str]:
    values = [v * scale for v in values]
    mean = statistics.fmean(values)
    std = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "–"
    return mean, f"{mean:.{digits}f} ± {std}"


def format_table(study, rows: list[dict], arms: list[str], recipe_name: str, baseline: str = BASELINE) -> str:
    """The Markdown of ``table.md`` for ``rows`` (from :func:`collect_rows`; p-values against ``baseline``)."""
    unit, spec = study.unit, study.spec
    by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in arms}
    shown = {VALID_LOSS.name: VALID_LOSS, **{f"{t.name}_{m.name}": m for t in study.test_sets
                                             for m in spec.test_metrics}}
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c in shown]
    paper = PAPER.get(recipe_name)
    flops = any(r.get("model_flops", "") != "" for r in rows)
    header = ["arm", "n", "updates", "epochs seen", "train s", *(["model FLOPs"] if flops else [])]
    tested = {c for c in columns if any(r.get(f"{c}_p", "") != "" for r in rows)}  # columns with a p column
    for c in columns:
        header.append(c.replace("_", " ") + (" (%)" if shown[c].percent else ""))
        if c in tested:
            header.append(f"p vs {baseline} ({c.rsplit('_', 1)[0]}, per seed)")
    if paper:
        header.append(f"paper ({paper[2]})")
    cells: dict[str, dict[str, str]] = {arm: {} for arm in arms}
    best: dict[str, float] = {}
    means: dict[tuple[str, str], float] = {}
    for c in columns:
        metric = shown[c]
        for arm, runs in by_arm.items():
            values = [r[c] for r in runs if r.get(c, "") != ""]
            if values:
                means[arm, c], cells[arm][c] = _mean_std(values, 100.0 if metric.percent else 1.0, metric.digits)
        arm_means = [means[a, c] for a in arms if (a, c) in means]
        if arm_means:
            best[c] = max(arm_means) if metric.higher_is_better else min(arm_means)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        runs = by_arm[arm]
        if not runs:
            continue
        row = [arm, str(len(runs)), f"{statistics.fmean(r['updates'] for r in runs):.0f}"]
        epochs = [r["epochs_seen"] for r in runs if r["epochs_seen"] != ""]
        row.append(f"{statistics.fmean(epochs):.2f}" if epochs else "")
        row.append(f"{statistics.fmean(r['train_seconds'] for r in runs):.1f}")
        if flops:  # a mean only over every run of the arm (runs made before a task logged FLOPs have none)
            counted = [r["model_flops"] for r in runs if r.get("model_flops", "") != ""]
            row.append(f"{statistics.fmean(counted):.3g}" if len(counted) == len(runs) else "")
        for c in columns:
            text = cells[arm].get(c, "")
            if text and math.isclose(means[arm, c], best[c], rel_tol=0, abs_tol=1e-12):
                text = f"**{text}**"
            row.append(text)
            if c in tested:
                ps = [r.get(f"{c}_p", "") for r in runs]
                row.append("—" if arm == baseline else ", ".join(f"{p:.3f}" for p in ps if p != ""))
        if paper:
            row.append(f"{paper[1][arm]}" if arm in paper[1] else "")
        lines.append("| " + " | ".join(row) + " |")
    notes = [f"Study of `{recipe_name}` ({study.task}); seeds {', '.join(map(str, study.seeds))}; mean ± sample "
             f"standard deviation over seeds (n runs), best mean in bold. `train s`: seconds of training updates "
             f"(from the logged {unit}/s; no validation); `epochs seen`: passes over the distinct training data."
             + (" `model FLOPs`: forward + backward FLOPs of the training updates (seqba.flops: 6 x matmul "
                "parameters x rows, plus attention)." if flops else "")]
    machines = machine_note(rows, arms)
    if machines:
        notes.append(machines)
    if any("p vs" in h for h in header):
        notes.append(f"p: {spec.significance.description} against {baseline} of the same seed, one value per seed.")
    elif spec.significance is None:
        notes.append(f"No significance test: the {study.task} task defines none for its test metrics "
                     "(TaskSpec.significance).")
    if paper:
        notes.append("paper: Hoffer et al., \"Augment your batch\", CVPR 2020, Table 2 (full-scale training; compare "
                     "the ordering, not the values, unless this study ran the recipe at full scale).")
    for arm in arms:
        if study.notes.get(arm):
            notes.append(f"`{arm}`: {study.notes[arm]}.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def machine_note(rows: list[dict], arms: list[str]) -> str:
    """Where the runs trained (``machine`` of their ``train.done``): one machine -> ``"Machine: X."``; several ->
    which runs ran where, since training seconds (and, on some tasks, results: float rounding differs between CPU
    kinds) are then not comparable across them; "" when no run recorded one."""
    where: dict[str, list[str]] = {}
    for arm in arms:
        for row in rows:
            if row["arm"] == arm:
                where.setdefault(row.get("machine", "") or "not recorded", []).append(f"{arm} {row['seed']}")
    if set(where) <= {"not recorded"}:
        return ""
    if len(where) == 1:
        return f"Machine: {next(iter(where))}."
    return ("Machines (training seconds compare only within one): "
            + "; ".join(f"{machine}: {', '.join(runs)}" for machine, runs in where.items()) + ".")


def equal_time_counterparts(arms: list[str]) -> dict[str, str]:
    """BA arm -> the equal-time arm it is judged against: its own ``equal_time_X`` where the study has one, else
    ``equal_time`` (timed from ``ba``) where the study has that; BA arms with neither are left out."""
    out = {}
    for arm in arms:
        if is_baseline(arm):
            continue
        own = f"equal_time_{arm}"
        if own in arms or "equal_time" in arms:
            out[arm] = own if own in arms else "equal_time"
    return out


def equal_time_verdict(study, rows: list[dict], arms: list[str], pvalues: dict | None = None) -> str:
    """A short paragraph, made from the numbers: does each BA arm beat its equal-time counterpart (fixed #steps
    trained for that arm's wall-clock on the same seed; :func:`equal_time_counterparts`), seed by seed? "" when no
    BA arm has one.

    The metric is the task's first test metric on the ``test`` set (the best validation loss when no run has it).
    Per BA arm: the mean difference to its counterpart over the seeds both finished, the per-seed differences, the
    seeds it wins, the family's paired test against the counterpart (``pvalues``: ``(set, arm, seed) -> p`` of each
    arm against its counterpart, from :func:`seqba.compare.significance.study_pvalues`) where it has one, and the
    ratio of model FLOPs and training seconds. The label: "pays" when the arm wins every paired seed (and, with a
    test, p < 0.05 for every seed), "does not pay" when it loses on the mean, "not settled" otherwise.

    Args:
        rows: :func:`collect_rows` of the study; arms: its arms in table order.
    """
    counterparts = equal_time_counterparts(arms)
    if not counterparts:
        return ""
    metric = next(iter(study.spec.test_metrics), None)
    column = f"test_{metric.name}" if metric else ""
    if metric is None or not any(r.get(column, "") != "" for r in rows):
        metric, column = VALID_LOSS, VALID_LOSS.name
    by = {(r["arm"], r["seed"]): r for r in rows if r.get(column, "") != ""}
    name = "best validation loss" if column == VALID_LOSS.name else f"test {metric.name}"
    scale = 100.0 if metric.percent else 1.0
    sign = 1.0 if metric.higher_is_better else -1.0
    lines = []
    for arm, counterpart in counterparts.items():
        base = {seed: r for (a, seed), r in by.items() if a == counterpart}
        seeds = [seed for seed in study.seeds if (arm, seed) in by and seed in base]
        if not seeds:
            continue
        diffs = [(by[arm, s][column] - base[s][column]) * scale for s in seeds]
        wins = sum(sign * d > 0 for d in diffs)
        mean = statistics.fmean(diffs)
        text = (f"`{arm}` vs `{counterpart}`, {name}: {mean:+.{metric.digits}f} on the mean "
                f"(per seed {' / '.join(f'{d:+.{metric.digits}f}' for d in diffs)}; better for {wins} of "
                f"{len(seeds)} seeds")
        ps = [pvalues.get(("test", arm, s)) for s in seeds] if pvalues and column != VALID_LOSS.name else []
        tested = bool(ps) and all(p is not None for p in ps)
        if tested:
            text += f"; p {' / '.join(f'{p:.3f}' for p in ps)}"
        ratios, time_ratio = [], None
        for key, what in (("model_flops", "model FLOPs"), ("train_seconds", "training seconds")):
            pairs = [(by[arm, s].get(key, ""), base[s].get(key, "")) for s in seeds]
            if all(a != "" and b for a, b in pairs):
                ratio = statistics.fmean(a / b for a, b in pairs)
                ratios.append(f"{ratio:.2f}x the {what}")
                time_ratio = ratio if key == "train_seconds" else time_ratio
        if ratios:
            text += "; " + ", ".join(ratios)
        if sign * mean <= 0:
            label = "does not pay"
        elif wins == len(seeds) and (not tested or all(p < 0.05 for p in ps)):
            label = "pays"
        else:
            label = "not settled"
        caveat = ""
        if time_ratio is not None and not 1 / 1.2 <= time_ratio <= 1.2:
            timed = timed_arm(counterpart)
            if timed != arm:
                caveat = (f" `{counterpart}` matched `{timed}`'s wall-clock, not this arm's "
                          f"({time_ratio:.2f}x its seconds): the baseline had {'less' if time_ratio > 1 else 'more'} "
                          f"time than this arm; `equal_time_{arm}` would match it.")
            else:
                caveat = (f" The measured times were not equal ({time_ratio:.2f}x): runs that shared the machine, "
                          "or a step bound by something other than its arithmetic; time it on an idle machine to "
                          "settle it.")
        moved = [s for s in seeds if by[arm, s].get("machine") and base[s].get("machine")
                 and by[arm, s]["machine"] != base[s]["machine"]]
        if moved:
            caveat += (f" Seed{'s' if len(moved) > 1 else ''} {', '.join(map(str, moved))}: `{counterpart}` trained "
                       f"on another machine than `{arm}` (see Machines), so its updates were bought with time "
                       "measured elsewhere.")
        lines.append(f"{text}): **{label}** at equal time.{caveat}")
    if not lines:
        return ""
    own = sorted({c for c in counterparts.values() if c != "equal_time"})
    head = ("Is BA worth its compute? `equal_time` trains fixed #steps for the `ba` arm's measured wall-clock on "
            "the same seed" + (f" (`equal_time_X`: for arm X's; here {', '.join(f'`{c}`' for c in own)})"
                               if own else "") + "; each BA arm against its equal-time arm (generated from the runs above):")
    return head + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"

"""What the rest of seqba asks about a task family: :class:`TaskSpec`, the value of a task module's ``SPEC``.

The trainer, ``seqba.eval``, ``seqba.compare``, ``seqba.analyze`` and gradient statistics read a family only
through its spec (and the :class:`~seqba.tasks.base.Task` it names), never by its name or class. A walk-through of
a new family is in ``docs/adding_a_task.md``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["TaskSpec", "Metric", "SignificanceTest", "EvalOptions", "option"]


def _no_checks(cfg: Any, where: Callable[[tuple[str, ...]], str]) -> None:
    """The default ``TaskSpec.check``: nothing beyond the per-field checks."""


def option(default: Any, help: str, *, low: float | None = None, strict: bool = False,  # noqa: A002 - argparse's
           file: str | None = None) -> Any:
    """A field of an :class:`EvalOptions` dataclass, with what ``seqba.eval``'s generated option needs.

    Args:
        default: the value when the option is not given.
        help: one line for ``--help``.
        low: numbers must be ``>= low`` (``> low`` when ``strict``); every number must be finite.
        file: ``"read"``: a file that must exist; ``"write"``: a file whose folder must exist and be writable
            (both checked before any work).
    """
    return field(default=default, metadata={"help": help, "low": low, "strict": strict, "file": file})


@dataclass
class EvalOptions:
    """What ``python -m seqba.eval`` gives every task's ``evaluate``; a family subclasses it with its own fields.

    ``seqba.eval`` generates one command-line option per field of the subclass (``max_len_a`` -> ``--max-len-a``;
    type, default, bounds and help from the annotation and :func:`option`), shown in a group titled by the
    family, and refuses an option of another family. ``__post_init__`` may resolve defaults that depend on other
    fields (e.g. an output file beside the checkpoint) and raise :class:`~seqba.errors.UsageError`.

    Attributes:
        checkpoint: the model file evaluated (outputs default to its folder).
        split: split of the recipe's data (``test``, ``valid``, ...).
        device: torch device string.
    """

    checkpoint: str
    split: str = "test"
    device: str = "cpu"

    @classmethod
    def task_fields(cls) -> list[dataclasses.Field]:
        """The fields a family adds to these common ones (one command-line option each)."""
        common = {f.name for f in dataclasses.fields(EvalOptions)}
        return [f for f in dataclasses.fields(cls) if f.name not in common]


@dataclass(frozen=True)
class Metric:
    """A test metric that ``seqba.eval`` returns and ``seqba.compare`` reports.

    Attributes:
        name: key in the evaluation's JSON (``bleu``, ``ppl``, ``accuracy``, ...).
        higher_is_better: which mean the study table marks best.
        percent: shown x100 with ``(%)`` in the table (a fraction in [0, 1]).
        digits: decimals in the table.
    """

    name: str
    higher_is_better: bool
    percent: bool = False
    digits: int = 2


@dataclass(frozen=True)
class SignificanceTest:
    """A paired test of every arm of a study against its baseline arm of the same seed (``fixed_steps``, or
    ``compare --baseline``), on the per-example outputs that evaluation wrote (``TaskSpec.outputs_option``).

    Attributes:
        metric: the test metric the p-values are about (the report's ``SET_<metric>_p`` column).
        description: the test in a few words for ``table.md`` (its name, resamples, source; the report adds
            "against BASELINE of the same seed").
        paired: ``paired(baseline, systems, references) -> {system: p}``: outputs and references one string per
            test example, in reference order.
        references: ``references(cfg, split) -> list[str]``: the references of a split of the recipe's data.
    """

    metric: str
    description: str
    paired: Callable[[list[str], dict[str, list[str]], list[str]], dict[str, float]]
    references: Callable[[Any, str], list[str]]


@dataclass(frozen=True)
class TaskSpec:
    """A task family: its recipe sections, the class that trains it, and what evaluation, studies and analysis ask.

    Attributes:
        data_config, model_config, criterion_config: dataclasses of the recipe's ``data``, ``model`` and
            ``criterion`` sections.
        task_class: what builds the run's :class:`~seqba.tasks.base.Task`: a subclass, or any callable
            ``(cfg, accelerator) -> Task`` (language modelling picks its class by ``model.arch``).
        evaluate: ``evaluate(cfg, model_state, options) -> dict`` (``python -m seqba.eval``); None: no evaluation.
        eval_options: the :class:`EvalOptions` subclass ``evaluate`` takes; its fields are ``seqba.eval``'s options
            for this family.
        check: ``check(cfg, where)`` raises :class:`~seqba.errors.ConfigError` for an invalid combination of
            fields; ``where(("ba", "layout"))`` formats a key's location (recipe line or override). Runs at
            ``seqba.config.load``.
        fingerprint: ``fingerprint(cfg) -> str | None``: what identifies the data a run of ``cfg`` reads today
            (e.g. a prepared corpus's manifest hash; None when there is nothing to fingerprint). The trainer records
            it in every checkpoint and model file; a resume and ``seqba.eval`` refuse a checkpoint whose recorded
            fingerprint differs from the current one.
        batch_key: the recipe key of B, the distinct samples (or tokens) per batch, that ``seqba.compare`` scales
            (``fixed_samples`` multiplies it by M); None: the family has no compare arms.
        batch_unit: what a row of the batch counts in: the task's ``step_logs`` report ``<unit>_count`` (rows
            computed) and ``distinct_<unit>_count``, from which compare derives throughput and samples seen.
        test_metrics: the metrics of ``evaluate``'s result that a study reports, in table order.
        curve_metric: the validation metric (``valid_<name>`` in ``metrics.jsonl``) a study plots.
        report_checkpoint: the file of a run that a study evaluates (``checkpoint_best.pt`` or
            ``checkpoint_last.pt``, e.g. when validation is the test split and best-of would select on it).
        test_set_options: the ``eval_options`` fields (source, reference) that evaluate raw files instead of a
            split, for ``seqba.compare --test-set NAME=SRC,REF``; None: only the recipe's test split.
        outputs_option: the ``eval_options`` field naming the file of per-example outputs (hypotheses), which a
            study sets per run and test set; None: evaluation writes none.
        significance: the test of a study's arms against ``fixed_steps``; None: the family defines none and the
            study's table says so.
        analysis: the :class:`~seqba.tasks.base.GradAdapter` subclass of ``python -m seqba.analyze
            grad-correlation``; None: not supported.
        fork_arms: ``fork_arms(cfg) -> {arm name: ba.fork_layer}``, the forked-BA arms a study of ``cfg`` can run
            by name (translation: ``ba_fork_enc``, ``ba_fork_top``); None: the family has none.
    """

    data_config: type
    model_config: type
    criterion_config: type
    task_class: Callable[[Any, Any], Any]
    evaluate: Callable[..., dict] | None = None
    eval_options: type = EvalOptions
    check: Callable[[Any, Callable[[tuple[str, ...]], str]], None] = _no_checks
    fingerprint: Callable[[Any], str | None] | None = None
    batch_key: str | None = None
    batch_unit: str = "rows"
    test_metrics: tuple[Metric, ...] = ()
    curve_metric: str = "loss"
    report_checkpoint: str = "checkpoint_best.pt"
    test_set_options: tuple[str, str] | None = None
    outputs_option: str | None = None
    significance: SignificanceTest | None = None
    analysis: type | None = None
    fork_arms: Callable[[Any], dict[str, int]] | None = None

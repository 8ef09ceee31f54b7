"""Significance of every arm against a baseline arm of the same seed (``fixed_steps`` unless ``compare --baseline``
names another), by the task's own paired test.

The test is the family's ``TaskSpec.significance`` (e.g. sacreBLEU's paired bootstrap resampling of BLEU; see each
task module), run on the per-example outputs each run's evaluation wrote (:func:`seqba.compare.study.outputs_file`)
against the references of the test set: the ``--test-set`` reference file, or the recipe's test split. A family
without one gets no p-values, and the study's table says so. The table reports one p-value per seed.
"""
from __future__ import annotations

from pathlib import Path

from seqba import config as config_lib
from seqba.compare.study import outputs_file
from seqba.data.prepare import read_lines

__all__ = ["BASELINE", "study_pvalues"]

BASELINE = "fixed_steps"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def study_pvalues(study, arms: list[str], baseline: str = BASELINE) -> dict[tuple[str, str, int], float]:
    """``(test set, arm, seed) -> p`` for every arm with outputs on a set where ``baseline`` of that seed has
    them too ({} for a family without a significance test, or without a ``baseline`` arm)."""
    test = study.spec.significance
    if test is None or baseline not in arms:
        return {}
    out = {}
    for test_set in study.test_sets:
        if test_set.src:
            refs = read_lines(test_set.ref)
        else:
            refs = test.references(config_lib.load(study.recipe, study.overrides), "test")
        for seed in study.seeds:
            base = outputs_file(study.run_dir(baseline, seed), test_set.name)
            if not base.is_file():
                continue
            systems = {}
            for arm in arms:
                hyp = outputs_file(study.run_dir(arm, seed), test_set.name)
                if arm != baseline and hyp.is_file():
                    systems[arm] = _lines(hyp)
            if systems:
                for arm, p in test.paired(_lines(base), systems, refs).items():
                    out[(test_set.name, arm, seed)] = p
    return out

"""Paired bootstrap resampling of every arm's BLEU against the ``fixed_steps`` arm of the same seed (translation).

The test is sacreBLEU's own (``sacrebleu.significance.PairedTest`` with ``test_type="bs"``, the library behind
``sacrebleu REF -i BASE SYS --paired-bs``; Koehn 2004, "Statistical significance tests for machine translation
evaluation"): 1000 resamples of the test sentences, seeded by ``SACREBLEU_SEED`` (default 12345), so the p-values
are reproducible. The p-value is the probability, under resampling, that the arm's BLEU advantage over
fixed_steps (or disadvantage) arises by chance; the table reports one per seed.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["paired_bootstrap", "study_pvalues"]

BASELINE = "fixed_steps"


def paired_bootstrap(baseline: list[str], systems: dict[str, list[str]], references: list[str],
                     n_samples: int = 1000) -> dict[str, float]:
    """p-values of each system's corpus BLEU against ``baseline`` (detokenized sacreBLEU defaults).

    Args:
        baseline, systems: hypotheses, one string per test sentence, in reference order.
        references: one reference per sentence.
        n_samples: bootstrap resamples (sacreBLEU's default is 1000).

    Returns:
        system name -> p-value; 1.0 for a system whose hypotheses are the baseline's (sacreBLEU's test would give
        1 / (n_samples + 1) there: every resampled difference is 0 and none exceeds the real one, 0).

    Raises:
        ValueError: hypotheses and references of different lengths.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    for name, hyps in [(BASELINE, baseline), *systems.items()]:
        if len(hyps) != len(references):
            raise ValueError(f"{name}: {len(hyps)} hypotheses for {len(references)} references")
    out = {name: 1.0 for name, hyps in systems.items() if list(hyps) == list(baseline)}
    named = [(BASELINE, baseline), *((name, hyps) for name, hyps in systems.items() if name not in out)]
    if len(named) > 1:
        _, scores = PairedTest(named, {"BLEU": BLEU()}, [references], test_type="bs", n_samples=n_samples)()
        out.update({name: result.p_value for name, result in zip(scores["System"][1:], scores["BLEU"][1:])})
    return {name: out[name] for name in systems}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def study_pvalues(study, arms: list[str]) -> dict[tuple[str, str, int], float]:
    """``(test set, arm, seed) -> p`` for every arm with hypotheses on a set where ``fixed_steps`` of that seed
    has them too (translation only; {} otherwise or without a fixed_steps arm)."""
    if study.task != "translation" or BASELINE not in arms:
        return {}
    from seqba.data.prepare import read_lines
    from seqba.data.translation import read_raw_lines

    out = {}
    for test in study.test_sets:
        refs = read_lines(test.ref) if test.src else read_raw_lines(study.prepared_dir, "test", "target")
        for seed in study.seeds:
            base = study.run_dir(BASELINE, seed) / f"hyp.{test.name}.txt"
            if not base.is_file():
                continue
            systems = {}
            for arm in arms:
                hyp = study.run_dir(arm, seed) / f"hyp.{test.name}.txt"
                if arm != BASELINE and hyp.is_file():
                    systems[arm] = _lines(hyp)
            if systems:
                for arm, p in paired_bootstrap(_lines(base), systems, refs).items():
                    out[(test.name, arm, seed)] = p
    return out

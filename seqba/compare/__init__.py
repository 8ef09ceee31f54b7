"""Compare BA with its baselines: ``python -m seqba.compare RECIPE.yaml --arms fixed_steps,fixed_samples,ba
--seeds 1,2,3 --out studies/NAME [--test-set NAME=SRC,REF ...] [--arm NAME:key=value,...] [--launcher local|slurm]
[--launch-args "..."] [key=value ...]``.

The paper's three-way comparison at equal updates (Hoffer et al., "Augment your batch", CVPR 2020, Table 2),
with seeds, an equal-wall-clock arm, significance, a table and plots. Modules, in the order a study uses them::

    arms.py          derive fixed_steps / fixed_samples / ba / equal_time / custom arms from one BA recipe
    study.py         the study (study.json) and its runs OUT/runs/ARM/seed_S; equal_time resolved per seed
    runs.py          one run: seqba.train then seqba.eval per test set, as subprocesses; skips what is done
    launchers.py     local (in sequence, or --jobs N at a time) or submitit/Slurm (one job per run); progress, ETA
    records.py       a run's metrics.jsonl -> updates, samples seen, rows computed, training seconds, curves
    significance.py  the task's paired test of each arm against fixed_steps (or --baseline), per seed
    report.py        results.csv and table.md, with the equal-time verdict;  curves.py: curves.png
    cli.py           the command line

Tiny CPU run::

    python -m seqba.compare recipes/resnet_mnist_m4.yaml --seeds 1,2 --out studies/smoke_mnist \\
        train.max_updates=20 train.max_epochs=0
"""
from seqba.compare.cli import main

__all__ = ["main"]

"""Run under ``accelerate launch --multi_gpu --num_processes 2`` by tests/test_union_equivalence.py.

``union_worker.py RECIPE OUT [key=value ...]``: builds the Trainer of ``RECIPE`` (with ``equivalence.EXACT`` and the
overrides) on each rank and makes two updates on the rank's own batches. Writes ``OUT/rank{r}.json`` (the sample
ids of each update's batches on this rank, each update's logs) and ``OUT/params{u}_rank{r}.pt`` (the parameters,
float64, before the first update, u=0, and after update u=1, 2).
"""
import json
import sys
from pathlib import Path

import torch

from equivalence import build_trainer, parameters, sample_ids

UPDATES = 2

recipe, out, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
trainer = build_trainer(recipe, *overrides, f"output_dir={out / 'run'}")
rank = trainer.accelerator.process_index
torch.save(parameters(trainer), out / f"params0_rank{rank}.pt")
record = {"world": trainer.accelerator.num_processes, "ids": [], "logs": []}
windows = trainer.update_windows(0)
for update in range(1, UPDATES + 1):
    batches = next(windows)
    record["ids"].append([sample_ids(batch) for batch in batches])
    record["logs"].append(trainer.train_step(batches))
    torch.save(parameters(trainer), out / f"params{update}_rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps(record))
trainer.accelerator.wait_for_everyone()

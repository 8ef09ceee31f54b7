"""Run under `accelerate launch --multi_gpu --num_processes 2` by tests/test_integrations_accelerate.py.

Writes OUT/rank{r}.json: the error that accelerator.prepare gives a rank-sharded seqba sampler, and the indices each
rank read through seqba.integrations.accelerate.prepare_data_loader.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from seqba import RepeatBatchSampler, TokenBudgetBatchSampler
from seqba.integrations.accelerate import prepare_data_loader

torch.set_num_threads(1)
out = Path(sys.argv[1])
accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True: gloo across CPU processes
lengths = np.random.default_rng(0).integers(1, 40, 400)
dataset = list(range(len(lengths)))


def sampler():
    return TokenBudgetBatchSampler(lengths, 128, seed=1, num_replicas=accelerator.num_processes,
                                   rank=accelerator.process_index)


errors = {}
for name, batch_sampler in (("plain", sampler()), ("repeated", RepeatBatchSampler(sampler(), 2))):
    try:
        list(accelerator.prepare(DataLoader(dataset, batch_sampler=batch_sampler)))
        errors[name] = None
    except RuntimeError as err:
        errors[name] = str(err)
loader = prepare_data_loader(accelerator, DataLoader(dataset, batch_sampler=RepeatBatchSampler(sampler(), 2)))
loader.set_epoch(1)
seen = [b.tolist() for b in loader]
(out / f"rank{accelerator.process_index}.json").write_text(json.dumps(
    {"errors": errors, "seen": seen, "device": str(loader.device), "world": accelerator.num_processes}))

"""Run under `accelerate launch --multi_gpu --num_processes 2` by tests/test_integrations_transformers.py.

One BA update (M=4) of the tiny GPT-2 through BATrainer on 2 gloo processes, by the route given in argv[2];
writes OUT/rank{r}.pt, the parameters after the update.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_tiny import collate, tiny_gpt2, toy_dataset, training_args  # noqa: E402

from seqba.integrations.transformers import BAArguments, BATrainer  # noqa: E402

torch.set_num_threads(1)
out, route = Path(sys.argv[1]), sys.argv[2]
# device route: 16 samples, 8 per process: the update sees all 16. index route: each process's first token batch.
ba = BAArguments(repeats=4) if route == "device" else BAArguments(repeats=4, route="index", max_tokens=48)
trainer = BATrainer(model=tiny_gpt2(), args=training_args(out / "run", per_device_train_batch_size=8),
                    train_dataset=toy_dataset(16), data_collator=collate, ba=ba)
assert trainer.args.world_size == 2, trainer.args.world_size
trainer.train()
torch.save(trainer.model.state_dict(), out / f"rank{trainer.args.process_index}.pt")

"""A tiny GPT-2 built from a config (no hub), a toy causal-LM dataset and the hand-computed BA update.

Shared by tests/test_integrations_transformers.py and tests/transformers_worker.py (2 gloo processes).
"""
import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from seqba import repeat_batch

VOCAB = 50


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """2 layers, 16-dim, no dropout (so M copies give the gradient of one: the update is checkable by hand)."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(config)
    # "GPT2LMHeadModel" matches no loss name, so transformers leaves loss_type None and the Trainer then counts
    # num_items_in_batch on unshifted labels (one token per row too many, at M=1 as at any M).
    model.loss_type = "ForCausalLM"
    return model


def toy_dataset(n: int = 8, seed: int = 0) -> list[dict]:
    """``n`` samples of 3..12 random tokens: {"input_ids": (T,) int64, "labels": (T,) int64}."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 13, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (length,), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def collate(samples: list[dict]) -> dict:
    """Right-pad to the longest: input_ids (B, T) pad 0, attention_mask (B, T), labels (B, T) pad -100."""
    width = max(len(s["input_ids"]) for s in samples)
    batch = {"input_ids": torch.zeros(len(samples), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(samples), width, dtype=torch.long),
             "labels": torch.full((len(samples), width), -100, dtype=torch.long)}
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        batch["input_ids"][row, :n] = s["input_ids"]
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = s["labels"]
    return batch


def training_args(out_dir, **overrides) -> TrainingArguments:
    """One plain SGD update (no clipping, no decay, constant lr), nothing saved or reported."""
    args = dict(output_dir=str(out_dir), max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
                weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0, per_device_train_batch_size=4,
                per_device_eval_batch_size=3, gradient_accumulation_steps=1, logging_steps=1, save_strategy="no",
                report_to=[], use_cpu=True, seed=7, average_tokens_across_devices=True,
                dataloader_num_workers=0, disable_tqdm=True)
    return TrainingArguments(**(args | overrides))


def hand_update(model, batches: list[list[dict]], repeats: int, lr: float = 0.5):
    """SGD on the per-token mean causal-LM loss over all M copies of every sample in ``batches``.

    Each batch is collated and expanded with repeat_batch; the loss is sum over all label tokens (shifted, as
    GPT-2) divided by their total count. Returns (updated model copy, loss value).
    """
    model = copy.deepcopy(model)
    model.train()
    total, count = 0.0, 0
    for samples in batches:
        batch = repeat_batch(collate(samples), repeats)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        total = total + torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels.reshape(-1),
                                                          ignore_index=-100, reduction="sum")
        count += int((labels != -100).sum())
    loss = total / count
    loss.backward()
    loss = loss.detach()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return model, loss.item()

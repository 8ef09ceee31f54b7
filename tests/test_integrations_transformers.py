"""seqba.integrations.transformers: one BA update of a tiny GPT-2 through transformers.Trainer equals the update by
hand, with and without gradient accumulation, by both routes; evaluation is that of M=1; two gloo processes."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from hf_tiny import collate, hand_update, tiny_gpt2, toy_dataset, training_args  # noqa: E402
from test_integrations_accelerate import ROOT, accelerate_launch  # noqa: E402

from seqba import RepeatBatchSampler, TokenBudgetBatchSampler  # noqa: E402
from seqba.integrations.transformers import BAArguments, BATrainer  # noqa: E402


def assert_same_params(a, b, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol, rtol=0), name


def train_one_update(tmp_path, ba, data, **args):
    model = tiny_gpt2()
    start = tiny_gpt2()
    trainer = BATrainer(model=model, args=training_args(tmp_path, **args), train_dataset=data,
                        data_collator=collate, ba=ba)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return start, trainer, logs[0]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_device_route_update_equals_hand_and_m1(tmp_path, accumulation):
    data = toy_dataset(8)
    per_device = 8 // accumulation
    start, trainer, log = train_one_update(tmp_path / "m4", BAArguments(repeats=4), data,
                                           per_device_train_batch_size=per_device,
                                           gradient_accumulation_steps=accumulation)
    # the update's batches are the whole dataset in some order; the mean over all tokens does not depend on it
    expected, loss = hand_update(start, [data], repeats=4)
    assert_same_params(trainer.model, expected)
    assert log["loss"] == pytest.approx(loss, rel=1e-5), "loss is the per-token mean, not M times it"
    assert (log["ba_repeats"], log["ba_rows_per_update"], log["ba_samples_per_update"]) == (4, 32, 8)
    _, m1, log1 = train_one_update(tmp_path / "m1", BAArguments(repeats=1), data,
                                   per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
    assert_same_params(trainer.model, m1.model)  # no dropout: M identical copies give the M=1 gradient
    assert log1["loss"] == pytest.approx(log["loss"], rel=1e-5)


def test_index_route_token_budget_update_equals_hand(tmp_path):
    data = toy_dataset(12)
    lengths = np.array([len(s["input_ids"]) for s in data])
    ba = BAArguments(repeats=3, route="index", max_tokens=40, layout="tiled")
    start, trainer, log = train_one_update(tmp_path, ba, data)
    first = next(iter(RepeatBatchSampler(TokenBudgetBatchSampler(lengths, 40, seed=7), 3, layout="tiled")))
    distinct = first[: len(first) // 3]
    expected, loss = hand_update(start, [[data[i] for i in distinct]], repeats=3)
    assert_same_params(trainer.model, expected)
    assert log["loss"] == pytest.approx(loss, rel=1e-5)
    assert log["ba_rows_per_update"] == len(first) and log["ba_samples_per_update"] == len(distinct)


def test_index_route_fixed_size_batches(tmp_path):
    data = toy_dataset(10)
    trainer = BATrainer(model=tiny_gpt2(), args=training_args(tmp_path, per_device_train_batch_size=4,
                                                              dataloader_drop_last=True, max_steps=-1,
                                                              num_train_epochs=1),
                        train_dataset=data, data_collator=collate, ba=BAArguments(repeats=2, route="index"))
    loader = trainer.get_train_dataloader()
    assert [b["input_ids"].shape[0] for b in loader] == [8, 8]
    trainer.train()
    assert trainer.state.global_step == 2


def test_evaluation_is_that_of_m1(tmp_path):
    data, valid = toy_dataset(8), toy_dataset(7, seed=1)

    def accuracy(pred):
        logits, labels = pred.predictions, pred.label_ids
        assert logits.shape[0] == labels.shape[0] == len(valid), "evaluation batches must not be repeated"
        mask = labels[:, 1:] != -100
        return {"accuracy": float((logits[:, :-1].argmax(-1) == labels[:, 1:])[mask].mean())}

    results = []
    for repeats in (1, 4):
        trainer = BATrainer(model=tiny_gpt2(), args=training_args(tmp_path / str(repeats)), train_dataset=data,
                            eval_dataset=valid, data_collator=collate, compute_metrics=accuracy,
                            ba=BAArguments(repeats=repeats))
        results.append(trainer.evaluate())
    assert results[0]["eval_loss"] == results[1]["eval_loss"] and math.isfinite(results[0]["eval_loss"])
    assert results[0]["eval_accuracy"] == results[1]["eval_accuracy"]


def test_ba_arguments_validation():
    with pytest.raises(ValueError, match="route"):
        BAArguments(route="sampler")
    with pytest.raises(ValueError, match="max_tokens"):
        BAArguments(max_tokens=64)
    with pytest.raises(ValueError, match="repeats"):
        BAArguments(repeats=0)


@pytest.mark.parametrize("route", ["device", "index"])
def test_two_processes_update_equals_hand(tmp_path, route):
    proc = accelerate_launch(ROOT / "tests" / "transformers_worker.py", str(tmp_path), route)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = toy_dataset(16)
    if route == "device":
        batches = [data]  # 8 distinct samples per process: the one update sees all 16
    else:
        lengths = np.array([len(s["input_ids"]) for s in data])
        batches = [[data[i] for i in next(iter(TokenBudgetBatchSampler(lengths, 48, seed=7, num_replicas=2, rank=r)))]
                   for r in range(2)]
    expected, _ = hand_update(tiny_gpt2(), batches, repeats=4)
    for rank in range(2):
        model = tiny_gpt2()
        model.load_state_dict(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True))
        assert_same_params(model, expected, atol=1e-5)


def test_readme_trainer_example(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.chdir(tmp_path)
    train, valid = toy_dataset(8), toy_dataset(4, seed=1)
    # --- README: Trainer ---
    model = tiny_gpt2()  # GPT2LMHeadModel(GPT2Config(...)), and model.loss_type = "ForCausalLM" (see below)
    args = TrainingArguments(output_dir="runs/gpt2_ba", max_steps=2, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, report_to=[], use_cpu=True)
    # (a) dropout copies: the Trainer loads B samples, compute_loss expands them to M·B rows on the device
    trainer = BATrainer(model=model, args=args, train_dataset=train, eval_dataset=valid, data_collator=collate,
                        ba=BAArguments(repeats=4))
    # (b) augmented copies: M copies of every index in token-budget batches (64 distinct tokens per process)
    trainer = BATrainer(model=model, args=args, train_dataset=train, eval_dataset=valid, data_collator=collate,
                        ba=BAArguments(repeats=4, route="index", max_tokens=64))
    trainer.train()               # logs loss, ba_repeats, ba_rows_per_update, ba_samples_per_update
    metrics = trainer.evaluate()  # evaluation batches are never repeated
    # --- end ---
    assert trainer.state.global_step == 2 and math.isfinite(metrics["eval_loss"])
    assert all(e["ba_repeats"] == 4 for e in trainer.state.log_history if "loss" in e)

"""ba.fork_layer through the CLI (issue 21): the translation task trains with copies made inside the model.

Without dropout a fork changes nothing but where the rows are repeated: the run's losses and weights equal BA's
(fork_layer 0). Sample chunks cut a forked batch by sample; the counters and the consistency term see M·B rows.
"""
import json

import pytest
import torch

from seqba import config as config_lib
from seqba import train as train_cli

from runs import ROOT, data_dir, losses, recipe  # noqa: F401 (fixtures)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    return torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]


NO_DROPOUT = ["model.dropout=0.0", "train.max_updates=4", "train.validate_interval_updates=0", "ba.repeats=3"]


def test_fork_without_dropout_is_ba(recipe, tmp_path):
    """Dropout 0: the copies are equal wherever they are made, so fork_layer 1 gives BA's losses and weights (SGD,
    whose update is linear in the gradient, so that float-level differences stay float-level)."""
    runs, sgd = {}, ["optim.optimizer=sgd", "optim.lr=0.5", "optim.lr_scheduler=constant"]
    for k in (0, 1):
        assert train_cli.main([str(recipe), *NO_DROPOUT, *sgd, f"ba.fork_layer={k}",
                               f"output_dir={tmp_path / str(k)}"]) == 0
        runs[k] = tmp_path / str(k)
    ba, fork = losses(runs[0]), losses(runs[1])
    assert ba.keys() == fork.keys() and all(fork[s] == pytest.approx(ba[s], rel=1e-5) for s in ba)
    for name, value in _weights(runs[0]).items():
        torch.testing.assert_close(_weights(runs[1])[name], value, rtol=1e-4, atol=1e-6)
    first = next(r for r in _records(runs[1]) if "loss" in r)
    assert first["tokens_per_step"] == pytest.approx(3 * first["distinct_tokens_per_step"])
    assert first["sentences_per_step"] == next(r for r in _records(runs[0]) if "loss" in r)["sentences_per_step"]
    # model FLOPs as executed (seqba.flops): the encoder layer once per sample instead of M times
    flops = [next(r for r in _records(runs[k]) if "loss" in r)["model_flops_per_step"] for k in (0, 1)]
    assert 0 < flops[1] < flops[0]


def test_fork_in_sample_chunks_and_with_consistency(recipe, tmp_path):
    """Chunks of a forked batch are cut by sample (same losses without dropout); with dropout the copies made
    above the fork differ, so a consistency term is positive."""
    assert train_cli.main([str(recipe), *NO_DROPOUT, "ba.fork_layer=1", f"output_dir={tmp_path / 'whole'}"]) == 0
    assert train_cli.main([str(recipe), *NO_DROPOUT, "ba.fork_layer=1", "ba.sample_chunks=2",
                           f"output_dir={tmp_path / 'chunks'}"]) == 0
    whole, chunks = losses(tmp_path / "whole"), losses(tmp_path / "chunks")
    assert all(chunks[s] == pytest.approx(whole[s], rel=1e-5) for s in whole)
    assert train_cli.main([str(recipe), "train.max_updates=3", "train.validate_interval_updates=0", "ba.fork_layer=1",
                           "ba.consistency=sym_kl", "ba.consistency_alpha=1.0",
                           f"output_dir={tmp_path / 'symkl'}"]) == 0
    terms = [r["consistency"] for r in _records(tmp_path / "symkl") if "consistency" in r]
    assert terms and all(t > 0 for t in terms)


@pytest.mark.parametrize("overrides, message", [
    (["ba.fork_layer=2"], "leaves no layer to tell the copies apart"),
    (["ba.fork_layer=1", "ba.repeats=1"], "needs ba.repeats >= 2"),
    (["ba.fork_layer=1", "ba.expand_on_device=false"], "expand_on_device: true"),
    (["ba.fork_layer=-1"], "must be >= 0"),
])
def test_fork_refusals(recipe, overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(recipe, overrides)


def test_images_refuse_a_fork():
    with pytest.raises(config_lib.ConfigError, match="image copies are augmentations"):
        config_lib.load(ROOT / "recipes" / "resnet_mnist_m4.yaml", ["ba.fork_layer=1"])

"""The consistency term in training (issue 10): config checks, micro-batches on sample boundaries, logged term."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqba import config as config_lib
from seqba import train as train_cli
from seqba.errors import ConfigError
from seqba.losses import consistency_loss
from seqba.layout import CopyLayout
from seqba.repeat import repeat_batch

from runs import ROOT, data_dir, recipe  # noqa: F401 (fixtures)

RECIPES = ROOT / "recipes"


@settings(max_examples=60, deadline=None)
@given(samples=st.integers(1, 9), repeats=st.integers(1, 5), chunks=st.integers(1, 12),
       layout=st.sampled_from(["adjacent", "tiled"]))
def test_sample_chunks_keep_every_copy_together(samples, repeats, chunks, layout):
    ids = repeat_batch(torch.arange(samples), repeats, layout)  # the sample id of every row
    parts = CopyLayout(repeats, layout).sample_chunks(samples * repeats, chunks)
    assert sorted(torch.cat(parts).tolist()) == list(range(samples * repeats))  # each row exactly once
    for rows in parts:
        chunk_ids = ids[rows]
        distinct = chunk_ids.unique()
        assert len(rows) == repeats * len(distinct)
        # the chunk is itself in the batch's layout: repeating its distinct ids gives its rows' ids
        first = chunk_ids[::repeats] if layout == "adjacent" else chunk_ids[: len(distinct)]
        assert torch.equal(repeat_batch(first, repeats, layout), chunk_ids)


@pytest.mark.parametrize("layout", ["adjacent", "tiled"])
@pytest.mark.parametrize("kind", ["sym_kl", "js"])
def test_consistency_over_sample_chunks_sums_to_the_whole_batch(layout, kind):
    torch.manual_seed(0)
    samples, repeats = 7, 3
    lprobs = torch.randn(samples * repeats, 5, 11).log_softmax(-1)
    whole = consistency_loss(lprobs, repeats, layout=layout, kind=kind)
    parts = sum(consistency_loss(lprobs[rows], repeats, layout=layout, kind=kind)
                for rows in CopyLayout(repeats, layout).sample_chunks(samples * repeats, 3))
    assert parts == pytest.approx(whole.item(), rel=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["ba.repeats=1", "ba.consistency=sym_kl", "ba.consistency_alpha=1"], "needs ba.repeats >= 2"),
    (["ba.consistency=js", "ba.consistency_alpha=1", "ba.group_size=2"], "cannot meet"),
    (["ba.consistency=js"], "ba.consistency_alpha: set a weight > 0"),
    (["ba.consistency=kl", "ba.consistency_alpha=1"], "'kl' is not one of none, sym_kl, js"),
])
def test_invalid_combinations_fail_at_load(recipe, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load(recipe, overrides)


def test_task_specific_combinations_fail_at_load():
    with pytest.raises(ConfigError, match="chunks hold different copies"):
        config_lib.load(RECIPES / "awd_lstm_ptb_small_m10_symkl.yaml", ["ba.sample_chunks=2"])
    with pytest.raises(ConfigError, match="mixup pairs every copy"):
        config_lib.load(RECIPES / "resnet_mnist_m4_js.yaml", ["data.mixup_alpha=0.2"])


def test_training_logs_the_term_and_sample_chunks_keep_the_loss(recipe, tmp_path):
    """With dropout the term is positive and logged; without dropout the copies agree (term 0) and 2 micro-batches
    on sentence boundaries give the whole batch's losses."""
    common = [str(recipe), "ba.repeats=3", "ba.consistency=sym_kl", "ba.consistency_alpha=2", "train.max_updates=3",
              "train.validate_interval_updates=0"]
    assert train_cli.main([*common, f"output_dir={tmp_path / 'drop'}"]) == 0
    records = [json.loads(x) for x in (tmp_path / "drop" / "metrics.jsonl").read_text().splitlines()]
    terms = [r["consistency"] for r in records if "consistency" in r]
    assert len(terms) == 3 and all(t > 0 for t in terms)
    no_drop = [*common, "model.dropout=0"]
    assert train_cli.main([*no_drop, f"output_dir={tmp_path / 'whole'}"]) == 0
    assert train_cli.main([*no_drop, "ba.sample_chunks=2", f"output_dir={tmp_path / 'chunks'}"]) == 0

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    assert losses(tmp_path / "chunks") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)

"""``train.update_freq=k`` (gradient accumulation over k batches) makes the same update as one batch holding the
union of the k batches: the loop sums the k batches' summed losses and divides by their total target tokens
(seqba.trainer's normalisation), not by each batch's own.

Tiny Transformer, dropout 0 (the M copies are identical and both runs deterministic), SGD with momentum: two
updates are compared, the second one through the momentum buffer.
"""
import pytest

from equivalence import (assert_same_updates, build_trainer, parameters, same_weights, sample_ids, union_batch,
                         updates)
from runs import data_dir, recipe  # noqa: F401 (fixtures)

K = 3


@pytest.mark.parametrize("repeats", [1, 2])
def test_update_freq_gives_the_update_of_the_union_batch(recipe, tmp_path, repeats):
    common = [f"ba.repeats={repeats}", "train.max_updates=2"]
    accumulated = build_trainer(recipe, *common, f"train.update_freq={K}", f"output_dir={tmp_path / 'accumulated'}")
    union = build_trainer(recipe, *common, f"output_dir={tmp_path / 'union'}")
    before = parameters(accumulated)
    assert same_weights(parameters(union), before)  # the same initial weights
    windows = accumulated.update_windows(0)
    for update in (1, 2):
        batches = next(windows)
        ids = [i for batch in batches for i in sample_ids(batch)]
        assert len(batches) == K and len(set(ids)) == len(ids)
        sizes = {float(batch["ntokens"]) for batch in batches}
        assert len(sizes) > 1, "batches of equal size would not tell a per-batch normalisation from the right one"
        got = accumulated.train_step(batches)
        want = union.train_step([union_batch(union, ids)])
        assert got["sample_size"] == want["sample_size"] == repeats * sum(float(b["ntokens"]) for b in batches)
        assert got["loss_sum"] == pytest.approx(want["loss_sum"], rel=1e-5)
        after = parameters(accumulated)
        assert_same_updates(updates(before, after), updates(before, parameters(union)))
        assert got["gnorm"] == pytest.approx(want["gnorm"], rel=1e-4)
        before = after
    assert accumulated.state["num_updates"] == union.state["num_updates"] == 2
    assert accumulated.state["iterations_in_epoch"] == 2 * K

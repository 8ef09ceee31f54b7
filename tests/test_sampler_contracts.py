"""Argument contracts, fixed-size batches, padding-efficiency figures and cheap array batches of the samplers."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from seqba import FixedSizeBatchSampler, RepeatBatchSampler, TokenBudgetBatchSampler


@pytest.mark.parametrize("seed", [-1, 1.5, 2.0, True, "3"])
def test_seed_must_be_a_non_negative_int(seed):
    with pytest.raises(ValueError, match=rf"seed.*{seed!r}"):
        TokenBudgetBatchSampler([3, 4], 8, seed=seed)


@pytest.mark.parametrize("epoch", [-1, 0.5, 1.0, None])
def test_set_epoch_rejects_bad_epochs(epoch):
    sampler = TokenBudgetBatchSampler([3, 4], 8)
    with pytest.raises(ValueError, match=rf"epoch.*{epoch!r}"):
        sampler.set_epoch(epoch)


@pytest.mark.parametrize("state, match", [
    ({}, r"missing 'epoch', 'iterations_in_epoch'"),
    ({"epoch": 0}, r"missing 'iterations_in_epoch'"),
    ({"epoch": -2, "iterations_in_epoch": 0}, r"epoch.*-2"),
    ({"epoch": 1.5, "iterations_in_epoch": 0}, r"epoch.*1\.5"),
    ({"epoch": 0, "iterations_in_epoch": 0.5}, r"iterations_in_epoch.*0\.5"),
    ({"epoch": 0, "iterations_in_epoch": -1}, r"iterations_in_epoch.*-1"),
])
def test_load_state_dict_rejects_bad_states(state, match):
    sampler = TokenBudgetBatchSampler([3, 4, 5, 6], 8)
    with pytest.raises(ValueError, match=match):
        sampler.load_state_dict(state)


def test_float_lengths_error_points_at_fixed_size_batches():
    with pytest.raises(ValueError, match="FixedSizeBatchSampler"):
        TokenBudgetBatchSampler(np.ones(8), 8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 9), st.booleans(), st.sampled_from([(1, 1), (2, 1), (2, 2), (3, 1)]),
       st.integers(0, 3))
def test_fixed_size_batches_partition_the_dataset(n, batch_size, drop_last, world_group, epoch):
    world, group_size = world_group
    groups = world // group_size
    num_batches = -(-n // batch_size)
    too_few = n // batch_size < groups if drop_last else -(-num_batches // groups) * groups > n
    if too_few:
        with pytest.raises(ValueError, match="cannot fill"):
            FixedSizeBatchSampler(n, batch_size, drop_last=drop_last, num_replicas=world, group_size=group_size)
        return
    per_rank = []
    for rank in range(world):
        s = FixedSizeBatchSampler(n, batch_size, drop_last=drop_last, seed=5, num_replicas=world, rank=rank,
                                  group_size=group_size)
        s.set_epoch(epoch)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for g in range(groups) for batch in per_rank[g * group_size] for i in batch]
    assert len(seen) == len(set(seen)) and set(seen) <= set(range(n))
    if drop_last:
        assert all(len(b) == batch_size for r in per_rank for b in r)
        assert len(seen) == (n // batch_size) // groups * groups * batch_size
    else:
        assert sorted(seen) == list(range(n))
        if groups == 1:
            assert sorted(len(b) for b in per_rank[0])[1:] == [batch_size] * (len(per_rank[0]) - 1)
    assert s.batch_size == batch_size and s.drop_last == drop_last


def test_fixed_size_with_repeats_in_a_dataloader():
    sampler = FixedSizeBatchSampler(10, 4, drop_last=True, seed=0)
    batches = list(DataLoader(list(range(100, 110)), batch_sampler=RepeatBatchSampler(sampler, 2)))
    assert [len(b) for b in batches] == [8, 8]
    for b in batches:
        assert b[0::2].tolist() == b[1::2].tolist()


def padded_reference(lengths_list, batches):
    real = sum(int(np.sum(lengths[b])) for lengths in lengths_list for b in batches)
    slots = sum(len(b) * int(np.max(lengths[b])) for lengths in lengths_list for b in batches)
    return real / slots


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 30)), min_size=4, max_size=80), st.integers(0, 2))
def test_padding_efficiency_names_what_it_measures(pairs, epoch):
    src, tgt = (np.array(x) for x in zip(*pairs))
    num_tokens = np.maximum(src, tgt)
    sampler = TokenBudgetBatchSampler(num_tokens, 64, seed=3, num_replicas=2, rank=1)
    sampler.set_epoch(epoch)
    everything = sampler._global_batches(epoch)
    assert sampler.padding_efficiency == pytest.approx(padded_reference([num_tokens], everything))
    assert sampler.padding_efficiency_of(src, tgt, epoch=epoch) == pytest.approx(
        padded_reference([src, tgt], everything))
    with pytest.raises(ValueError, match="lengths"):
        sampler.padding_efficiency_of(src[:-1])


def test_yield_arrays_gives_int64_arrays_equal_to_the_lists():
    lengths = np.random.default_rng(0).integers(1, 30, 200)
    lists = list(TokenBudgetBatchSampler(lengths, 64, seed=2))
    arrays = list(TokenBudgetBatchSampler(lengths, 64, seed=2, yield_arrays=True))
    assert all(isinstance(a, np.ndarray) and a.dtype == np.int64 for a in arrays)
    assert [a.tolist() for a in arrays] == lists
    data = list(range(1000, 1200))
    loaded = list(DataLoader(data, batch_sampler=TokenBudgetBatchSampler(lengths, 64, seed=2, yield_arrays=True)))
    assert [b.tolist() for b in loaded] == [[1000 + i for i in batch] for batch in lists]


def test_bptt_iterator_rejects_bad_seeds_and_epochs():
    import torch

    from seqba.data.lm import BPTTIterator

    source = torch.zeros(20, 2, dtype=torch.long)
    for seed in (-1, 0.5):
        with pytest.raises(ValueError, match=rf"seed.*{seed!r}"):
            BPTTIterator(source, 5, seed=seed)
    it = BPTTIterator(source, 5)
    for epoch in (-1, 1.5):
        with pytest.raises(ValueError, match=rf"epoch.*{epoch!r}"):
            it.set_epoch(epoch)
    with pytest.raises(ValueError, match="missing 'epoch', 'iterations_in_epoch'"):
        it.load_state_dict({**{k: v for k, v in it.state_dict().items() if k not in ("epoch", "iterations_in_epoch")}})

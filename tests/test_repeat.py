"""M-fold repetition along any axis: repeat_batch(dim=...), repeat_streams, and RepeatBatchSampler's forwarding."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from seqba import RepeatBatchSampler, TokenBudgetBatchSampler, repeat_batch, repeat_streams


def slow_repeat(x: torch.Tensor, repeats: int, layout: str, dim: int) -> torch.Tensor:
    """Reference: build the repeated tensor slice by slice along ``dim``."""
    slices = list(x.unbind(dim))
    order = [s for s in slices for _ in range(repeats)] if layout == "adjacent" else slices * repeats
    return torch.stack(order, dim)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.integers(1, 4),
       st.sampled_from(["adjacent", "tiled"]), st.data())
def test_repeat_batch_any_dim_equals_reference(shape, repeats, layout, data):
    x = torch.arange(int(np.prod(shape))).view(shape)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    out = repeat_batch({"x": x, "ntokens": 5}, repeats, layout, dim=dim)
    assert torch.equal(out["x"], slow_repeat(x, repeats, layout, dim))
    assert out["ntokens"] == 5 * repeats


def test_time_major_batch_repeats_the_batch_axis():
    """(T, B) data and targets, as pytorch/examples word_language_model's get_batch before flattening."""
    data = torch.tensor([[1, 2, 3], [4, 5, 6]])  # (T=2, B=3)
    targets = data + 10
    x, y = repeat_batch((data, targets), 2, "tiled", dim=1)
    assert x.shape == (2, 6) and x.tolist() == [[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6]]
    assert torch.equal(y, x + 10)
    assert repeat_batch(data, 2, dim=1).tolist() == [[1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6]]


def test_repeat_batch_dim_out_of_range_names_the_shape():
    with pytest.raises(ValueError, match=r"dim=1.*\(6,\)"):
        repeat_batch((torch.zeros(2, 3), torch.zeros(6)), 2, dim=1)
    with pytest.raises(ValueError, match="dim"):
        repeat_batch(torch.zeros(2), 2, dim=1.5)


def test_repeat_streams_is_public_and_equals_tiled_repeat_batch():
    streams = torch.arange(12).view(4, 3)  # (L, B)
    out = repeat_streams(streams, 3)
    assert out.shape == (4, 9)
    assert torch.equal(out, repeat_batch(streams, 3, "tiled", dim=1))
    for c in range(3):
        assert torch.equal(out[:, c * 3:(c + 1) * 3], streams)
    from seqba.data.lm import repeat_streams as lm_repeat_streams

    assert lm_repeat_streams is repeat_streams
    with pytest.raises(ValueError, match="2-D"):
        repeat_streams(torch.arange(5), 2)
    with pytest.raises(ValueError, match="repeats"):
        repeat_streams(streams, 0)


def test_set_epoch_is_a_no_op_when_the_wrapped_sampler_has_none():
    """Accelerate's DataLoaderShard.set_epoch and timm's train.py call batch_sampler.set_epoch(epoch)."""
    torch_batches = BatchSampler(SequentialSampler(range(6)), 4, drop_last=False)
    wrapped = RepeatBatchSampler(torch_batches, 2)
    wrapped.set_epoch(3)  # must not raise
    assert list(wrapped) == [[0, 0, 1, 1, 2, 2, 3, 3], [4, 4, 5, 5]]
    with pytest.raises(NotImplementedError, match=r"BatchSampler has no state_dict\(\)"):
        wrapped.state_dict()
    with pytest.raises(NotImplementedError, match=r"BatchSampler has no load_state_dict\(\)"):
        wrapped.load_state_dict({"epoch": 0, "iterations_in_epoch": 0})


def test_epoch_budget_rows_sees_one_mth_of_the_samples_with_the_rows_of_m1():
    """DeiT's repeated augmentation keeps an epoch's rows fixed; BA's default keeps its distinct samples fixed."""
    base = TokenBudgetBatchSampler(np.zeros(64, dtype=np.int64), None, max_sentences=8, seed=1)
    ba = RepeatBatchSampler(base, 4)
    deit = RepeatBatchSampler(base, 4, epoch_budget="rows")
    assert len(ba) == 8 and len(deit) == 2
    rows_m1 = sum(len(b) for b in base)
    assert sum(len(b) for b in ba) == 4 * rows_m1
    epochs = []
    for epoch in range(3):
        deit.set_epoch(epoch)
        batches = list(deit)
        assert len(batches) == len(deit) and sum(len(b) for b in batches) == rows_m1
        epochs.append({i for b in batches for i in b})
        assert len(epochs[-1]) == 16  # 1/M of the 64 distinct samples
    assert epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="epoch_budget"):
        RepeatBatchSampler(base, 4, epoch_budget="images")


def test_repeat_sampler_keeps_numpy_batches_numpy():
    wrapped = RepeatBatchSampler([np.array([3, 1])], 2)
    (batch,) = list(wrapped)
    assert isinstance(batch, np.ndarray) and batch.tolist() == [3, 3, 1, 1]
    (batch,) = list(RepeatBatchSampler(BatchSampler(RandomSampler(range(2)), 2, False), 1))
    assert sorted(batch) == [0, 1]

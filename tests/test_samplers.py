"""Property tests of the BA batching core against slow, obvious reference implementations."""
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from seqba import RepeatBatchSampler, TokenBudgetBatchSampler, repeat_batch
from seqba.samplers import batch_boundaries


def reference_batch_by_size(lengths, max_tokens, max_sentences=None, mult=1):
    """Slow fairseq-style greedy batching over the length-sorted order (the semantics batch_boundaries promises)."""
    order = np.argsort(lengths, kind="stable")
    batches, batch = [], []

    def overflow(n, longest):
        return (max_tokens is not None and n * longest > max_tokens) or (max_sentences is not None and n > max_sentences)

    for i in order:
        while batch and overflow(len(batch) + 1, max(max(lengths[j] for j in batch), lengths[i])):
            cut = max(mult * (len(batch) // mult), len(batch) % mult)
            batches.append(batch[:cut])
            batch = batch[cut:]
        batch.append(int(i))
    if batch:
        batches.append(batch)
    return batches


lengths_st = st.lists(st.integers(1, 40), min_size=1, max_size=120)
budget_st = st.integers(40, 200)
mult_st = st.integers(1, 8)
max_sent_st = st.one_of(st.none(), st.integers(1, 16))


@settings(max_examples=150, deadline=None)
@given(lengths_st, budget_st, max_sent_st, mult_st)
def test_fast_batching_equals_reference(lengths, max_tokens, max_sentences, mult):
    lengths = np.array(lengths)
    offsets = batch_boundaries(np.sort(lengths, kind="stable"), max_tokens, max_sentences, mult)
    expected = reference_batch_by_size(lengths, max_tokens, max_sentences, mult)
    assert np.diff(offsets).tolist() == [len(b) for b in expected]
    # the unshuffled sampler yields exactly the reference batches
    sampler = TokenBudgetBatchSampler(lengths, max_tokens, max_sentences=max_sentences,
                                      required_batch_size_multiple=mult, shuffle=False)
    assert list(sampler) == expected


def all_rank_batches(lengths, world, group_size, repeats=1, epoch=0, seed=0, **kw):
    out = []
    for rank in range(world):
        s = TokenBudgetBatchSampler(lengths, 64, num_replicas=world, rank=rank, group_size=group_size, seed=seed, **kw)
        s.set_epoch(epoch)
        out.append(list(RepeatBatchSampler(s, repeats)))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=8, max_size=150), st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (6, 3), (4, 1)]),
       st.integers(1, 4), st.integers(0, 5), st.integers(1, 4))
def test_each_index_m_times_budget_groups(lengths, world_group, repeats, epoch, mult):
    world, group_size = world_group
    lengths = np.array(lengths)
    per_rank = all_rank_batches(lengths, world, group_size, repeats, epoch, required_batch_size_multiple=mult)
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1, "every rank must yield the same number of batches"
    for rank in range(world):
        assert len(per_rank[rank]) == len(TokenBudgetBatchSampler(lengths, 64, num_replicas=world, rank=rank,
                                                                  group_size=group_size,
                                                                  required_batch_size_multiple=mult))
    # group members identical, groups disjoint
    groups = [per_rank[g * group_size] for g in range(world // group_size)]
    for rank in range(world):
        assert per_rank[rank] == groups[rank // group_size]
    seen = Counter(i for g in groups for batch in g for i in batch)
    assert seen == Counter({i: repeats for i in range(len(lengths))}), "each index exactly M times per epoch"
    for g in groups:
        for batch in g:
            distinct = sorted(set(batch))
            assert len(distinct) * max(lengths[distinct]) <= 64, "distinct-token budget holds"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=40, max_size=150), st.integers(0, 100), st.integers(0, 3))
def test_deterministic_and_epochs_differ(lengths, seed, epoch):
    lengths = np.array(lengths)
    a = TokenBudgetBatchSampler(lengths, 64, seed=seed)
    b = TokenBudgetBatchSampler(lengths, 64, seed=seed)
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(epoch + 1)
    if len(first) > 3:
        assert list(a) != first


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=10, max_size=150), st.integers(0, 3), st.data())
def test_resume_equals_uninterrupted(lengths, epoch, data):
    lengths = np.array(lengths)
    full = TokenBudgetBatchSampler(lengths, 64, seed=3, num_replicas=2, rank=1)
    full.set_epoch(epoch)
    expected = list(full)
    stop = data.draw(st.integers(0, len(expected)))
    run = TokenBudgetBatchSampler(lengths, 64, seed=3, num_replicas=2, rank=1)
    run.set_epoch(epoch)
    it = iter(run)
    consumed = [next(it) for _ in range(stop)]
    state = run.state_dict()
    resumed = TokenBudgetBatchSampler(lengths, 64, seed=3, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    assert consumed + list(resumed) == expected
    # the epoch after a resumed one starts from its beginning
    resumed.set_epoch(epoch + 1)
    full.set_epoch(epoch + 1)
    assert list(resumed) == list(full)


def test_invalid_size_errors_and_skip(caplog):
    lengths = np.array([5, 100, 7, 200])
    with pytest.raises(ValueError, match=r"sample 1 has 100 tokens, more than max_tokens=64"):
        TokenBudgetBatchSampler(lengths, 64)
    s = TokenBudgetBatchSampler(lengths, 64, skip_invalid_size=True)
    assert s.num_skipped == 2
    assert sorted(i for b in s for i in b) == [0, 2]
    assert "skipped 2 samples" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=None), "max_tokens or max_sentences"),
    (dict(required_batch_size_multiple=0), "required_batch_size_multiple"),
    (dict(num_replicas=4, rank=4), "rank"), (dict(num_replicas=4, rank=0, group_size=3), "group_size"),
])
def test_argument_validation(kwargs, match):
    args = dict(max_tokens=64) | kwargs
    with pytest.raises(ValueError, match=match):
        TokenBudgetBatchSampler([3, 4, 5], args.pop("max_tokens"), **args)


@pytest.mark.parametrize("repeats, layout", [(0, "adjacent"), (2.0, "adjacent"), (True, "adjacent"), (2, "interleaved")])
def test_repeat_validation(repeats, layout):
    with pytest.raises(ValueError, match=repr(repeats) if layout == "adjacent" else "interleaved"):
        RepeatBatchSampler([[0, 1]], repeats, layout=layout)


def test_repeat_layouts_and_forwarding():
    base = TokenBudgetBatchSampler([3] * 4, 6, shuffle=False)
    assert list(base) == [[0, 1], [2, 3]]
    assert list(RepeatBatchSampler(base, 3)) == [[0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3]]
    assert list(RepeatBatchSampler(base, 2, layout="tiled")) == [[0, 1, 0, 1], [2, 3, 2, 3]]
    assert list(RepeatBatchSampler([[4, 2]], 1)) == [[4, 2]]
    wrapped = RepeatBatchSampler(base, 2)
    assert len(wrapped) == 2
    wrapped.set_epoch(3)
    assert base.epoch == 3 and wrapped.state_dict()["epoch"] == 3
    RepeatBatchSampler([[0]], 2).set_epoch(1)  # a wrapped sampler without set_epoch: nothing to do
    with pytest.raises(NotImplementedError, match="state_dict"):
        RepeatBatchSampler([[0]], 2).state_dict()


class Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"x": torch.tensor([i, i * i]), "id": i}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_map_dataset(num_workers):
    sampler = RepeatBatchSampler(BatchSampler(SequentialSampler(range(10)), 4, drop_last=False), 2)
    loader = DataLoader(Squares(), batch_sampler=sampler, num_workers=num_workers)
    batches = list(loader)
    assert [b["id"].tolist() for b in batches] == [[0, 0, 1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6, 7, 7], [8, 8, 9, 9]]
    assert torch.equal(batches[2]["x"], torch.tensor([[8, 64], [8, 64], [9, 81], [9, 81]]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_hf_dataset(num_workers):
    datasets = pytest.importorskip("datasets")
    lengths = [3, 1, 2, 5, 4]
    ds = datasets.Dataset.from_dict({"length": lengths, "label": [0, 1, 0, 1, 0]}).with_format("torch")
    sampler = RepeatBatchSampler(TokenBudgetBatchSampler(lengths, 6, shuffle=False), 3, layout="tiled")
    batches = list(DataLoader(ds, batch_sampler=sampler, num_workers=num_workers))
    seen = torch.cat([b["length"] for b in batches])
    assert sorted(seen.tolist()) == sorted([3, 1, 2, 5, 4] * 3)
    assert batches[0]["length"].tolist() == [1, 2, 1, 2, 1, 2]


def pad_collate(samples):
    width = max(len(s["tokens"]) for s in samples)
    tokens = torch.zeros(len(samples), width, dtype=torch.long)
    for row, s in enumerate(samples):
        tokens[row, : len(s["tokens"])] = s["tokens"]
    return {"tokens": tokens, "sample_id": torch.tensor([s["id"] for s in samples]),
            "ntokens": int((tokens != 0).sum()), "nsentences": len(samples), "meta": ("x", torch.tensor(1.0))}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=12), st.integers(1, 5), st.sampled_from(["adjacent", "tiled"]))
def test_repeat_batch_equals_index_level_repetition(lengths, repeats, layout):
    samples = [{"tokens": torch.arange(1, n + 1), "id": i} for i, n in enumerate(lengths)]
    ids = list(range(len(samples)))
    index_level = pad_collate([samples[i] for i in next(iter(RepeatBatchSampler([ids], repeats, layout=layout)))])
    on_device = repeat_batch(pad_collate(samples), repeats, layout)
    assert torch.equal(index_level["tokens"], on_device["tokens"])
    assert torch.equal(index_level["sample_id"], on_device["sample_id"])
    assert index_level["ntokens"] == on_device["ntokens"] and index_level["nsentences"] == on_device["nsentences"]
    assert on_device["meta"][0] == "x"


def test_repeat_batch_tensor_and_tuple():
    x = torch.tensor([[1, 2], [3, 4]])
    assert repeat_batch(x, 2).tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]
    img, label = repeat_batch((x, torch.tensor([7, 8])), 2, "tiled")
    assert img.tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]] and label.tolist() == [7, 8, 7, 8]
    assert repeat_batch(x, 1) is x
    with pytest.raises(ValueError, match="repeats"):
        repeat_batch(x, 0)


def test_equalize_splits_largest_batches_without_losing_samples():
    lengths = np.full(10, 4)
    per_rank = [list(TokenBudgetBatchSampler(lengths, 16, num_replicas=3, rank=r, shuffle=False)) for r in range(3)]
    # 10 samples, 4 per batch -> 3 batches; 3 groups -> already equal
    assert [len(b) for b in per_rank] == [1, 1, 1]
    per_rank = [list(TokenBudgetBatchSampler(lengths, 16, num_replicas=4, rank=r, shuffle=False)) for r in range(4)]
    assert [len(b) for b in per_rank] == [1, 1, 1, 1]
    assert sorted(i for b in per_rank for batch in b for i in batch) == list(range(10))
    with pytest.raises(ValueError, match="cannot fill"):
        TokenBudgetBatchSampler([3, 3], 16, num_replicas=4, rank=0)


def test_padding_efficiency_realistic():
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(3.15, 0.6, 50_000)), 1, 256).astype(np.int64)
    s = TokenBudgetBatchSampler(lengths, 4096)
    assert s.padding_efficiency > 0.95
    assert sum(len(b) for b in s) == len(lengths)


def test_core_imports_with_only_torch_and_numpy():
    """`from seqba import ...` must not need yaml, accelerate, datasets, sentencepiece, sacrebleu, tqdm."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('yaml', 'accelerate', 'datasets', 'sentencepiece', 'sacrebleu', 'tqdm', 'matplotlib'):\n"
            "    sys.modules[m] = None\n"
            "from seqba import FixedSizeBatchSampler, RepeatBatchSampler, TokenBudgetBatchSampler, repeat_batch\n"
            "from seqba import repeat_streams\n"
            "import seqba.distributed\n"
            "print(list(RepeatBatchSampler(TokenBudgetBatchSampler([2, 2], 4, shuffle=False), 2)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[[0, 0, 1, 1]]"

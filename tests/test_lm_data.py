"""LM data: dictionary/tokenizing, column layout of streams and BA copies, BPTT windows, resumption, real PTB."""
import sys
import types

import numpy as np
import pytest
import torch

from seqba.data.lm import (
    EOS, BPTTIterator, Dictionary, batchify, load_corpus, load_corpus_hf, repeat_streams, tokenize_file,
)


def test_batchify_and_repeat_layout():
    data = torch.arange(26)
    batched = batchify(data, 4)  # 2 trailing tokens dropped
    assert batched.shape == (6, 4)
    for b in range(4):
        assert torch.equal(batched[:, b], torch.arange(6 * b, 6 * b + 6))  # column b = stream b
    tiled = repeat_streams(batched, 3)
    assert tiled.shape == (6, 12)
    for c in range(3):
        for b in range(4):
            assert torch.equal(tiled[:, c * 4 + b], batched[:, b])  # copy-major
    with pytest.raises(ValueError, match="bsz=30"):
        batchify(data, 30)
    with pytest.raises(ValueError, match="repeats"):
        repeat_streams(batched, 0)


def reference_lengths(seed, epoch, bptt, cap, rows):
    """awd-lstm-lm main.py's length draw, written out plainly, with the cap."""
    rng = np.random.default_rng(seed + epoch)
    lengths, i = [], 0
    while i < rows - 1:
        base = bptt if rng.random() < 0.95 else bptt / 2.0
        lengths.append(min(max(5, int(rng.normal(base, 5))), cap))
        i += lengths[-1]
    return lengths


@pytest.mark.parametrize("variable", [True, False])
def test_iterator_covers_stream_contiguously(variable):
    source = repeat_streams(batchify(torch.arange(2000), 4), 2)  # (500, 8)
    it = BPTTIterator(source, bptt=12, variable=variable, seed=7)
    batches = list(it)
    assert len(batches) == len(it)
    assert torch.equal(torch.cat([b.x for b in batches]), source[:-1])
    assert torch.equal(torch.cat([b.y for b in batches]), source[1:])
    for b in batches:
        assert b.x.shape == b.y.shape == (b.seq_len, 8)
        assert torch.equal(b.y[:-1], b.x[1:])
    if variable:
        assert it.seq_lens == reference_lengths(7, 0, 12, 32, 500)
        assert [b.lr_scale for b in batches] == [n / 12 for n in it.seq_lens]
        assert len(set(it.seq_lens)) > 1
    else:
        assert [b.seq_len for b in batches[:-1]] == [12] * (len(batches) - 1)
        assert {b.lr_scale for b in batches} == {1.0}


def test_epochs_are_seeded():
    source = batchify(torch.arange(3000), 2)
    a, b = BPTTIterator(source, 20, seed=1), BPTTIterator(source, 20, seed=1)
    assert a.seq_lens == b.seq_lens
    a.set_epoch(1)
    assert a.seq_lens != b.seq_lens and a.seq_lens == reference_lengths(1, 1, 20, 40, 1500)


def test_resume_mid_epoch_yields_same_batches():
    source = batchify(torch.arange(3000), 3)
    it = BPTTIterator(source, 15, seed=3)
    it.set_epoch(2)
    gen = iter(it)
    for _ in range(4):
        next(gen)
    state = it.state_dict()
    rest = list(gen)
    assert state["epoch"] == 2 and state["iterations_in_epoch"] == 4 and it.iterations_in_epoch == 0

    resumed = BPTTIterator(source, 15, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # same epoch: keeps the restored position
    again = list(resumed)
    assert len(again) == len(rest) == len(it) - 4
    for a, b in zip(rest, again):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.lr_scale == b.lr_scale
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # new epoch: starts at its first window
    assert resumed.iterations_in_epoch == 0 and next(iter(resumed)).x[0, 0] == 0

    with pytest.raises(ValueError, match="bptt"):
        BPTTIterator(source, 16, seed=3).load_state_dict(state)


def test_dictionary_and_oov_error(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" a b a \n c b \n")
    (tmp_path / "ptb.valid.txt").write_text(" b c \n")
    (tmp_path / "ptb.test.txt").write_text(" a \n a c \n b d \n")
    d = Dictionary.from_lines((tmp_path / "ptb.train.txt").read_text().splitlines())
    assert d.idx2word == ["a", "b", EOS, "c"]  # first-occurrence order, <eos> after line 1
    assert tokenize_file(tmp_path / "ptb.valid.txt", d).tolist() == [1, 3, 2]
    assert tokenize_file(tmp_path / "ptb.valid.txt", d, add_eos=False).tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"ptb\.test\.txt:3: word 'd'"):
        load_corpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="ptb.train.txt"):
        load_corpus(tmp_path / "missing")


def test_load_corpus_hf_same_as_files(tmp_path, monkeypatch):
    lines = {"train": [" a b a ", " c b "], "valid": [" b c "], "test": [" a c "]}
    for split, text in lines.items():
        (tmp_path / f"ptb.{split}.txt").write_text("\n".join(text) + "\n")
    hub = {"train": {"sentence": lines["train"]}, "validation": {"sentence": lines["valid"]},
           "test": {"sentence": lines["test"]}}
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, **kw: hub if name == "ptb_text_only" else None
    monkeypatch.setitem(sys.modules, "datasets", fake)
    hf, local = load_corpus_hf(), load_corpus(tmp_path)
    assert hf.dictionary.idx2word == local.dictionary.idx2word
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(hf, split), getattr(local, split))


def test_real_ptb(shared_data):
    corpus = load_corpus(shared_data / "ptb")
    assert len(corpus.dictionary) == 10000 and EOS in corpus.dictionary and "<unk>" in corpus.dictionary
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929589, 73760, 82430)
    assert corpus.train.dtype == torch.long and int(corpus.train.max()) == 9999
    assert repeat_streams(batchify(corpus.train, 20), 10).shape == (46479, 200)

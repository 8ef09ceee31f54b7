"""seqba.data.translation: collate against a slow reference, and the binary dataset read back after prepare."""
import pickle
import shutil

import numpy as np
import pytest
import torch

from seqba.data.prepare import prepare_translation
from seqba.data.synthetic import generate_pairs
from seqba.data.translation import (BOS_ID, EOS_ID, PAD_ID, TranslationDataset, collate, load_tokenizer,
                                    read_raw_lines, token_dtype, write_indexed)


def _sample(i, src, tgt):
    return {"id": i, "source": torch.tensor(src + [EOS_ID]), "target": torch.tensor(tgt + [EOS_ID])}


def _collate_reference(samples, pad=PAD_ID, bos=BOS_ID, eos=EOS_ID):
    """Row by row, the obvious way."""
    S = max(len(s["source"]) for s in samples)
    T = max(len(s["target"]) for s in samples)
    src = torch.full((len(samples), S), pad)
    tgt = torch.full((len(samples), T), pad)
    prev = torch.full((len(samples), T), pad)
    for b, s in enumerate(samples):
        src[b, :len(s["source"])] = s["source"]
        tgt[b, :len(s["target"])] = s["target"]
        prev[b, :len(s["target"])] = torch.cat([torch.tensor([bos]), s["target"][:-1]])
    return src, tgt, prev


def test_collate_hand_made_batch():
    samples = [_sample(7, [10, 11], [20, 21, 22]), _sample(7, [10, 11], [20, 21, 22]),
               _sample(2, [12, 13, 14, 15], [23])]
    batch = collate(samples)
    assert batch["src_tokens"].tolist() == [[10, 11, 3, 0, 0], [10, 11, 3, 0, 0], [12, 13, 14, 15, 3]]
    assert batch["src_lengths"].tolist() == [3, 3, 5]
    assert batch["target"].tolist() == [[20, 21, 22, 3], [20, 21, 22, 3], [23, 3, 0, 0]]
    assert batch["prev_output_tokens"].tolist() == [[2, 20, 21, 22], [2, 20, 21, 22], [2, 23, 0, 0]]
    assert batch["ntokens"] == 10 and batch["nsentences"] == 3
    assert batch["sample_id"].tolist() == [7, 7, 2]  # order kept, BA copies side by side
    for key in ("src_tokens", "src_lengths", "prev_output_tokens", "target", "sample_id"):
        assert batch[key].dtype == torch.int64, key


def test_collate_matches_reference_on_random_batches():
    rng = np.random.default_rng(0)
    for _ in range(20):
        samples = [_sample(int(i), rng.integers(4, 50, rng.integers(0, 9)).tolist(),
                           rng.integers(4, 50, rng.integers(0, 9)).tolist()) for i in rng.integers(0, 100, 6)]
        batch = collate(samples)
        src, tgt, prev = _collate_reference(samples)
        assert torch.equal(batch["src_tokens"], src)
        assert torch.equal(batch["target"], tgt)
        assert torch.equal(batch["prev_output_tokens"], prev)
        assert batch["ntokens"] == int((tgt != PAD_ID).sum())


def test_collate_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        collate([])
    with pytest.raises(ValueError, match="eos"):
        collate([{"id": 0, "source": torch.tensor([5, 3]), "target": torch.tensor([5, 6])}])


def test_write_indexed_layout(tmp_path):
    lengths = write_indexed(tmp_path / "x", [[5, 6], [], [7]], token_dtype(100))
    assert lengths.tolist() == [2, 0, 1]
    assert np.fromfile(tmp_path / "x.bin", dtype=np.uint16).tolist() == [5, 6, 7]
    assert np.fromfile(tmp_path / "x.idx", dtype=np.int64).tolist() == [0, 2, 2, 3]
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.int32


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """32/6/6 pairs of plain text (with umlauts, quotes, digits), prepared with a 200-piece vocabulary."""
    root = tmp_path_factory.mktemp("tiny")
    quoted = ("\"Hello,\" she said: 5 € & more.", "„Hallo“, sagte sie: 5 € & mehr.")
    pairs = generate_pairs(42, seed=5) + [quoted]
    splits = {"train": pairs[:30] + pairs[-1:], "valid": pairs[30:36], "test": pairs[36:42]}
    # every character of valid/test also occurs in train, so decoding is exact (no unk)
    chars = "".join(sorted(set("".join(en + de for en, de in pairs)) - {" "}))
    splits["train"].append((chars, chars))
    files = {}
    for split, split_pairs in splits.items():
        for side, lang in ((0, "en"), (1, "de")):
            path = root / f"{split}.{lang}"
            path.write_text("".join(f"  {p[side]} \n" for p in split_pairs), encoding="utf-8")
            files[f"{split}_{'src' if side == 0 else 'tgt'}"] = str(path)
    out = prepare_translation(root / "prepared", vocab_size=200, **files)
    return out, splits


def test_round_trip_every_split(tiny_corpus):
    out, splits = tiny_corpus
    sp = load_tokenizer(out)
    for split, pairs in splits.items():
        ds = TranslationDataset(out, split)
        assert len(ds) == len(pairs)
        for i, (en, de) in enumerate(pairs):
            item = ds[i]
            assert item["id"] == i and item["source"].dtype == torch.int64
            assert item["source"][-1] == EOS_ID and item["target"][-1] == EOS_ID
            assert sp.decode(item["source"][:-1].tolist()) == en
            assert sp.decode(item["target"][:-1].tolist()) == de
        assert np.array_equal(ds.num_tokens, np.maximum(ds.src_sizes, ds.tgt_sizes))
        assert ds.src_sizes[0] == len(ds[0]["source"]) and ds.num_tokens.dtype == np.int64
    assert read_raw_lines(out, "test", "target") == [de for _, de in splits["test"]]
    assert 1 in sp.encode("Ω", out_type=int)  # unseen characters map to unk=1
    assert [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()] == [0, 1, 2, 3]
    assert read_raw_lines(out, "valid", "source") == [en for en, _ in splits["valid"]]


def test_dataset_pickles_and_batches(tiny_corpus):
    out, _ = tiny_corpus
    ds = TranslationDataset(out, "valid")
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0]["source"], first["source"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["src_tokens"].shape[0] == 4 and batch["sample_id"].tolist() == [0, 1, 2, 3]


def test_dataset_errors(tiny_corpus, tmp_path):
    out, _ = tiny_corpus
    with pytest.raises(IndexError):
        TranslationDataset(out, "test")[6]
    with pytest.raises(FileNotFoundError, match="split 'dev'"):
        TranslationDataset(out, "dev")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        TranslationDataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="valid/test"):
        read_raw_lines(out, "train")


def test_truncated_bin_is_reported(tiny_corpus, tmp_path):
    out, _ = tiny_corpus
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = (copy / "valid.de.bin").read_bytes()
    (copy / "valid.de.bin").write_bytes(data[:-2])
    with pytest.raises(ValueError, match=r"valid\.de\.bin: \d+ bytes do not match"):
        TranslationDataset(copy, "valid")

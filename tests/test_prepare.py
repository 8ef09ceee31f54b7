"""seqba.data.prepare: cleaning counts, manifest, idempotency, atomic failure, bad-input errors, real Multi30k."""
import json
import os

import pytest

from seqba.data.prepare import PrepareConfig, clean_corpus, prepare_translation
from seqba.data.synthetic import generate_pairs
from seqba.data.translation import TranslationDataset, load_tokenizer, read_raw_lines


def _write_corpus(root, n_train=40, extra_train=()):
    """Aligned files {train,valid,test}.{en,de} from the synthetic generator; returns the explicit-path options."""
    pairs = generate_pairs(n_train + 10, seed=1)
    splits = {"train": pairs[:n_train] + list(extra_train), "valid": pairs[n_train:n_train + 5],
              "test": pairs[n_train + 5:]}
    options = {}
    for split, split_pairs in splits.items():
        for side, key in ((0, "src"), (1, "tgt")):
            path = root / f"{split}.{'en' if side == 0 else 'de'}"
            path.write_text("".join(p[side] + "\n" for p in split_pairs), encoding="utf-8")
            options[f"{split}_{key}"] = str(path)
    return options


def _no_leftovers(parent, name):
    """No output folder and no build folder; the build lock file (``.<name>.lock``) may stay."""
    return not (parent / name).exists() and not [p for p in parent.iterdir()
                                                 if p.name.startswith(f".{name}.") and p.suffix != ".lock"]


def test_clean_corpus_counts_each_filter():
    src = ["a b", "", "a", "a b c d e f g", "one two", "x y z"]
    tgt = ["c d", "x", "a b c d", "a", "eins zwei", "u v w"]
    kept_src, kept_tgt, counts = clean_corpus(src, tgt, max_len=5, max_ratio=3.0, max_lines=5)
    assert kept_src == ["a b", "one two"] and kept_tgt == ["c d", "eins zwei"]
    assert counts == {"lines": 6, "lines_used": 5, "sentences": 2, "dropped": {"empty": 1, "too_long": 1, "ratio": 1}}


def test_manifest_counts_and_valid_test_kept_whole(tmp_path):
    noisy = [("", "leer"), ("word " * 300, "Wort " * 300), ("a b c d e f g h i j", "x")]
    options = _write_corpus(tmp_path, extra_train=noisy)
    with open(options["test_src"], "a", encoding="utf-8") as f:  # empty test lines are kept, never dropped
        f.write("\n")
    with open(options["test_tgt"], "a", encoding="utf-8") as f:
        f.write("   \n")
    out = prepare_translation(tmp_path / "out", vocab_size=150, **options)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    train = manifest["splits"]["train"]
    assert train["lines"] == 43 and train["sentences"] == 40
    assert train["dropped"] == {"empty": 1, "too_long": 1, "ratio": 1}
    assert manifest["splits"]["test"]["sentences"] == 6 and manifest["splits"]["test"]["empty"] == {"src": 1, "tgt": 1}
    assert read_raw_lines(out, "test")[-1] == "" and len(TranslationDataset(out, "test")) == 6
    assert manifest["vocab_size"] == 150 and manifest["dtype"] == "uint16" and manifest["format_version"] == 1
    assert manifest["sentencepiece"]["model_type"] == "bpe" and manifest["special_ids"]["eos"] == 3
    assert len(manifest["sources"]["train"]["src"]["sha256"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.name != ".out.lock"]


def test_second_run_is_a_no_op_and_changes_rebuild(tmp_path, caplog):
    options = _write_corpus(tmp_path)
    out = prepare_translation(tmp_path / "out", vocab_size=150, **options)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    model = (out / "spm.model").read_bytes()
    with caplog.at_level("INFO", logger="seqba.data.prepare"):
        prepare_translation(tmp_path / "out", PrepareConfig(vocab_size=150, **options))
    assert "up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # a fresh build elsewhere gives the same SentencePiece model, byte for byte
    assert (prepare_translation(tmp_path / "again", vocab_size=150, **options) / "spm.model").read_bytes() == model
    prepare_translation(tmp_path / "out", vocab_size=120, **options)  # an option changed: rebuilt in place
    assert json.loads((out / "manifest.json").read_text())["vocab_size"] == 120
    assert len(load_tokenizer(out)) == 120
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.suffix != ".lock"] == []  # no build folder left


def test_unequal_line_counts_name_both_files(tmp_path):
    options = _write_corpus(tmp_path)
    with open(options["valid_tgt"], "a", encoding="utf-8") as f:
        f.write("eine Zeile zu viel\n")
    with pytest.raises(ValueError, match=r"valid\.en has 5 lines but .*valid\.de has 6 lines"):
        prepare_translation(tmp_path / "out", vocab_size=150, **options)
    assert _no_leftovers(tmp_path, "out")


def test_invalid_utf8_names_file_and_line(tmp_path):
    options = _write_corpus(tmp_path)
    with open(options["train_tgt"], "r+b") as f:
        lines = f.read().split(b"\n")
        lines[6] = b"kaputt \xff\xfe"
        f.seek(0)
        f.write(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"train\.de:7: invalid UTF-8"):
        prepare_translation(tmp_path / "out", vocab_size=150, **options)
    assert _no_leftovers(tmp_path, "out")


def test_missing_file_and_bad_options(tmp_path):
    options = _write_corpus(tmp_path)
    os.remove(options["test_src"])
    with pytest.raises(FileNotFoundError, match=r"test\.en"):
        prepare_translation(tmp_path / "out", vocab_size=150, **options)
    assert _no_leftovers(tmp_path, "out")
    with pytest.raises(ValueError, match="preset: unknown"):
        prepare_translation(tmp_path / "out", preset="wmt14")
    with pytest.raises(ValueError, match="vocab_size: is required"):
        prepare_translation(tmp_path / "out", train_src="a", train_tgt="b")
    with pytest.raises(ValueError, match="max_ratio"):
        prepare_translation(tmp_path / "out", preset="multi30k", max_ratio=0.5)


def test_vocab_too_large_and_foreign_out_dir(tmp_path):
    options = _write_corpus(tmp_path)
    with pytest.raises(ValueError, match=r"vocab_size=5000 is too large .* at most \d+"):
        prepare_translation(tmp_path / "out", vocab_size=5000, **options)
    assert _no_leftovers(tmp_path, "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        prepare_translation(tmp_path / "mine", vocab_size=150, **options)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_moses_unescape(tmp_path):
    options = _write_corpus(tmp_path, extra_train=[("it &apos;s &quot; A &amp; B &#124; &#91;x&#93; &lt;",
                                                    "es ist &quot; A &amp; B")])
    out = prepare_translation(tmp_path / "out", vocab_size=150, unescape_moses=True, **options)
    sp = load_tokenizer(out)
    ds = TranslationDataset(out, "train")
    assert sp.decode(ds[len(ds) - 1]["source"][:-1].tolist()) == "it 's \" A & B | [x] <"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["train"]["src"]["moses_unescaped"] is True


def test_real_multi30k(shared_data, tmp_path):
    out = prepare_translation(tmp_path / "m30k", preset="multi30k", data_root=str(shared_data), vocab_size=500,
                              max_train_lines=3000)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["splits"]["train"]["lines"] == 29000 and manifest["splits"]["train"]["lines_used"] == 3000
    assert manifest["splits"]["valid"]["sentences"] == 1014 and manifest["splits"]["test"]["sentences"] == 1000
    test = TranslationDataset(out, "test")
    refs = read_raw_lines(out, "test")
    assert len(test) == len(refs) == 1000
    first = (shared_data / "multi30k" / "test_2016_flickr.de").read_text(encoding="utf-8").split("\n")[0].strip()
    assert refs[0] == first
    assert load_tokenizer(out).decode(test[0]["target"][:-1].tolist()) == first


def test_wmt16_hub_loader_with_a_stand_in(tmp_path, monkeypatch):
    """The Hugging Face path, with datasets.load_dataset replaced by a local stand-in (no hub here)."""
    datasets = pytest.importorskip("datasets")
    pairs = generate_pairs(60, seed=2)
    rows = [{"de": de, "en": en} for en, de in pairs]
    rows[0]["de"] += "\nzweite Zeile"  # a newline inside a segment must not split it

    def load_dataset(name, config):
        assert (name, config) == ("wmt16", "de-en")
        return datasets.DatasetDict({split: datasets.Dataset.from_dict({"translation": part}) for split, part in
                                     (("train", rows[:40]), ("validation", rows[40:50]), ("test", rows[50:]))})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = prepare_translation(tmp_path / "wmt16", preset="wmt16", vocab_size=150)
    assert (out / "raw" / "train.de").read_text(encoding="utf-8").split("\n")[0].endswith(" zweite Zeile")
    assert len(TranslationDataset(out, "train")) == 40 and read_raw_lines(out, "test", "source")[0] == pairs[50][0]

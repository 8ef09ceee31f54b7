"""The streamed preparation (seqba.data.prepare) against the unstreamed reference it replaced: same bytes.

The reference below is the in-memory ``_build`` of revision 25acccb (every split read whole, cleaned whole,
SentencePiece trained on one list, every side encoded as one list of lists), kept here as the slow, obvious
version that the streamed one must reproduce byte for byte, for every file of the prepared folder.
"""
import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

import seqba.data.prepare as prepare
from seqba.data.prepare import (PrepareConfig, clean_corpus, prepare_translation, read_lines, train_sentencepiece)
from seqba.data.synthetic import generate_pairs
from seqba.data.translation import (BOS_ID, EOS_ID, PAD_ID, SPM_MODEL, UNK_ID, token_dtype, write_indexed)


def _reference_build(config, inputs, tmp):
    """Revision 25acccb's ``_build``: the whole corpus in memory."""
    import sentencepiece as spm

    texts, counts = {}, {}
    for split, sides in inputs.items():
        src, tgt = (read_lines(sides[s].path, sides[s].moses_escaped) for s in ("src", "tgt"))
        if len(src) != len(tgt):
            raise ValueError(f"{split}: {sides['src'].path} has {len(src)} lines but {sides['tgt'].path} "
                             f"has {len(tgt)} lines")
        if split == "train":
            src, tgt, counts[split] = clean_corpus(src, tgt, config.max_len, config.max_ratio, config.max_train_lines)
        else:
            counts[split] = {"lines": len(src), "sentences": len(src),
                             "empty": {"src": src.count(""), "tgt": tgt.count("")}}
            for lang, lines in ((config.src_lang, src), (config.tgt_lang, tgt)):
                (tmp / f"{split}.{lang}.txt").write_bytes("".join(f"{line}\n" for line in lines).encode())
        texts[split] = (src, tgt)
    vocab_size = config.vocab_size or prepare.PRESET_VOCAB_SIZE[config.preset]
    spm_options = dict(model_type="bpe", vocab_size=vocab_size, character_coverage=config.character_coverage,
                       pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, num_threads=config.num_threads,
                       input_sentence_size=config.spm_input_sentence_size,
                       shuffle_input_sentence=config.spm_input_sentence_size > 0, normalization_rule_name="nmt_nfkc")
    model = train_sentencepiece(texts["train"][0] + texts["train"][1], seed=config.seed, **spm_options)
    (tmp / SPM_MODEL).write_bytes(model)
    processor = spm.SentencePieceProcessor(model_proto=model)
    with open(tmp / "spm.vocab", "w", encoding="utf-8") as f:
        f.writelines(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n" for i in range(len(processor)))
    dtype = token_dtype(len(processor))
    for split, (src, tgt) in texts.items():
        for side, lang, lines in (("src", config.src_lang, src), ("tgt", config.tgt_lang, tgt)):
            ids = processor.encode(lines, out_type=int)
            lengths = write_indexed(tmp / f"{split}.{lang}", ids, dtype)
            counts[split][f"{side}_tokens"] = int(lengths.sum())
            counts[split][f"{side}_unk"] = sum(s.count(UNK_ID) for s in ids)
    return {"src_lang": config.src_lang, "tgt_lang": config.tgt_lang, "vocab_size": len(processor),
            "dtype": dtype.name, "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
            "sentencepiece": {"version": spm.__version__, "seed": config.seed, **spm_options}, "splits": counts}


def _same_folders(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []


def _awkward_corpus(root: Path) -> dict:
    """Files with a BOM, no final newline, Moses escapes, CR / U+2028 / NBSP inside lines, empty and long lines."""
    rng = np.random.default_rng(0)
    words = ["a", "bb", "ccc", "&amp;", "&apos;s", "Zürich", "ñu", "x\u00a0y", "r\rs", "q\u2028q", "Straße",
             "&#124;"]

    def line():
        return " ".join(rng.choice(words, size=int(rng.integers(0, 14))))

    src = [line() for _ in range(300)] + ["w " * 300]
    tgt = [line() for _ in range(300)] + ["v"]
    (root / "train.en").write_bytes(b"\xef\xbb\xbf" + "\n".join(src).encode())  # no newline at the end
    (root / "train.de").write_bytes(("\n".join(tgt) + "\n").encode())
    (root / "valid.en").write_bytes(("  " + "\n".join(src[:20]) + "\n\n").encode())
    (root / "valid.de").write_bytes(("\n".join(tgt[:21]) + "\n").encode())
    return {"train_src": str(root / "train.en"), "train_tgt": str(root / "train.de"),
            "valid_src": str(root / "valid.en"), "valid_tgt": str(root / "valid.de")}


def _both(tmp_path, monkeypatch, block_bytes=None, **options):
    """Prepare with the reference and with the streamed code; return both folders."""
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "_build", _reference_build)
        reference = prepare_translation(tmp_path / "reference", **options)
    if block_bytes:
        monkeypatch.setattr(prepare, "BLOCK_BYTES", block_bytes)
    streamed = prepare_translation(tmp_path / "streamed", **options)
    return reference, streamed


def test_awkward_files_give_the_reference_bytes(tmp_path, monkeypatch):
    options = _awkward_corpus(tmp_path)
    reference, streamed = _both(tmp_path, monkeypatch, block_bytes=97, vocab_size=50, unescape_moses=True,
                                max_len=100, workers=1, **options)
    _same_folders(reference, streamed)


def test_blocks_and_processes_do_not_change_the_bytes(tmp_path, monkeypatch):
    """Many blocks encoded over 2 processes (the pool path) give what the reference gives."""
    pairs = generate_pairs(400, seed=5)
    for split, part in (("train", pairs[:300]), ("valid", pairs[300:350]), ("test", pairs[350:])):
        for side, lang in ((0, "en"), (1, "de")):
            (tmp_path / f"{split}.{lang}").write_text("".join(p[side] + "\n" for p in part), encoding="utf-8")
    options = {f"{split}_{key}": str(tmp_path / f"{split}.{lang}") for split in ("train", "valid", "test")
               for key, lang in (("src", "en"), ("tgt", "de"))}
    reference, streamed = _both(tmp_path, monkeypatch, block_bytes=500, vocab_size=120, workers=2,
                                max_train_lines=280, **options)
    _same_folders(reference, streamed)


def test_real_multi30k_gives_the_reference_bytes(shared_data, tmp_path, monkeypatch):
    reference, streamed = _both(tmp_path, monkeypatch, preset="multi30k", data_root=str(shared_data),
                                vocab_size=400, max_train_lines=2000)
    _same_folders(reference, streamed)


def test_line_blocks_match_read_lines_and_its_errors(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"\xef\xbb\xbf  a\r\nb \xc3\xa9\n\n\xe2\x80\xa8c\xc2\xa0\nlast")
    reference = path.read_bytes()[3:].decode().split("\n")
    assert [line for block in prepare._line_blocks(path, process=True, block_bytes=3) for line in block] == \
        [line.strip() for line in reference]
    assert read_lines(path) == [line.strip() for line in reference]
    path.write_bytes(b"ok\nfine\nbad \xff here\n")
    with pytest.raises(ValueError, match=r"f\.txt:3: invalid UTF-8 \(invalid start byte at byte 12\)"):
        list(prepare._line_blocks(path, process=True, block_bytes=4))


def test_sampled_sentencepiece_is_reproducible(tmp_path, shared_data):
    """spm_input_sentence_size below the corpus size: SentencePiece's own reservoir sampling gave another model
    on every run; the seeded sample gives the same bytes every time, and another seed another sample."""
    options = dict(preset="multi30k", data_root=str(shared_data), vocab_size=300, max_train_lines=3000,
                   spm_input_sentence_size=1500)
    first = prepare_translation(tmp_path / "a", **options)
    second = prepare_translation(tmp_path / "b", **options)
    assert (first / SPM_MODEL).read_bytes() == (second / SPM_MODEL).read_bytes()
    _same_folders(first, second)
    other = prepare_translation(tmp_path / "c", **{**options, "seed": 1})
    assert (other / SPM_MODEL).read_bytes() != (first / SPM_MODEL).read_bytes()


def test_default_sample_size_is_resolved_and_recorded(tmp_path, monkeypatch, caplog):
    """spm_input_sentence_size=None: every sentence for a small corpus (recorded as 0, so folders prepared before
    the option existed stay up to date), a sample of SPM_AUTO_SENTENCES for a large one."""
    pairs = generate_pairs(120, seed=3)
    for lang, side in (("en", 0), ("de", 1)):
        (tmp_path / f"train.{lang}").write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")
    options = dict(train_src=str(tmp_path / "train.en"), train_tgt=str(tmp_path / "train.de"), vocab_size=100)
    small = prepare_translation(tmp_path / "small", PrepareConfig(**options))
    assert json.loads((small / "manifest.json").read_text())["config"]["spm_input_sentence_size"] == 0
    with caplog.at_level("INFO", logger="seqba.data.prepare"):
        prepare_translation(tmp_path / "small", spm_input_sentence_size=0, **options)
    assert "up to date" in caplog.text
    monkeypatch.setattr(prepare, "SPM_AUTO_SENTENCES", 150)  # 240 train sentences: now a "large" corpus
    large = prepare_translation(tmp_path / "large", **options)
    manifest = json.loads((large / "manifest.json").read_text())
    assert manifest["config"]["spm_input_sentence_size"] == 150
    assert manifest["sentencepiece"]["input_sentence_size"] == 150
    assert "overwrite" not in manifest["config"] and "workers" not in manifest["config"]


def _prepare_cli():
    """data_prep/prepare_translation.py as a module (it is a script, not part of the package)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "data_prep" / "prepare_translation.py"
    spec = importlib.util.spec_from_file_location("prepare_translation_cli", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_prepare_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    """data_prep/prepare_translation.py: a bad option (status 2) and a missing input file (status 1) are one
    ``error:`` line each, never a traceback."""
    cli = _prepare_cli()
    assert cli.main(["--out-dir", str(tmp_path / "a"), "--preset", "synthetic", "--vocab-size", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: vocab_size")
    missing = str(tmp_path / "missing.en")
    assert cli.main(["--out-dir", str(tmp_path / "b"), "--train-src", missing, "--train-tgt", missing,
                     "--valid-src", missing, "--valid-tgt", missing, "--vocab-size", "100"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.en" in err[0]
    assert not (tmp_path / "b").exists()


def test_prepare_cli_preset_flag(tmp_path, capsys):
    """``--preset NAME`` (a Literal field) parses as one of the presets, as data_prep/README.md shows."""
    cli = _prepare_cli()
    out = tmp_path / "syn"
    assert cli.main(["--preset", "synthetic", "--synthetic-train", "200", "--vocab-size", "100",
                     "--out-dir", str(out)]) == 0
    assert (out / "manifest.json").exists() and capsys.readouterr().out.strip() == str(out)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--out-dir", str(out), "--preset", "nope"])

"""A prepared corpus is identified, not silently rebuilt under a run that uses it, and its valid split is checked
at task setup (issue 19, items 6 and 8, translation)."""
import pytest

from seqba import train as train_cli
from seqba.data.prepare import CorpusInUseError, prepare_translation
from seqba.data.translation import corpus_fingerprint, record_user, recorded_users
from seqba.runlock import RunLock
from seqba.tasks import translation
from tests.runs import RECIPE

SYNTHETIC = dict(preset="synthetic", vocab_size=200, synthetic_train=300, synthetic_valid=20, synthetic_test=20)


def test_fingerprint_identifies_the_built_corpus(tmp_path):
    assert corpus_fingerprint(tmp_path / "nothing") is None
    out = prepare_translation(tmp_path / "corpus", **SYNTHETIC)
    first = corpus_fingerprint(out)
    assert len(first) == 16
    prepare_translation(out, **SYNTHETIC)  # up to date: untouched
    assert corpus_fingerprint(out) == first
    assert corpus_fingerprint(prepare_translation(tmp_path / "twin", **SYNTHETIC)) == first  # same bytes elsewhere
    prepare_translation(out, **{**SYNTHETIC, "seed": 1})  # no recorded user: rebuilt
    assert corpus_fingerprint(out) != first


def test_the_task_spec_registers_it(tmp_path):
    out = prepare_translation(tmp_path / "corpus", **SYNTHETIC)
    cfg = type("Cfg", (), {"data": type("Data", (), {"prepared_dir": str(out)})()})()
    assert translation.SPEC.fingerprint is translation.fingerprint
    assert translation.SPEC.fingerprint(cfg) == corpus_fingerprint(out)


def test_rebuild_refused_while_a_run_with_checkpoints_uses_it(tmp_path):
    out = prepare_translation(tmp_path / "corpus", user=tmp_path / "run_a", **SYNTHETIC)
    assert recorded_users(out) == [tmp_path / "run_a"]
    (tmp_path / "run_a").mkdir()
    prepare_translation(out, **{**SYNTHETIC, "seed": 1})  # run_a has no checkpoint yet: rebuilding is allowed
    record_user(out, tmp_path / "run_a")
    (tmp_path / "run_a" / "checkpoint_last.pt").write_bytes(b"weights")
    before = corpus_fingerprint(out)
    with pytest.raises(CorpusInUseError, match=rf"{out}.*run {tmp_path / 'run_a'} uses it .*checkpoint_last\.pt.*"
                                               r"data\.prepare\.overwrite=true"):
        prepare_translation(out, **SYNTHETIC)
    assert corpus_fingerprint(out) == before  # untouched
    prepare_translation(out, **SYNTHETIC, overwrite=True)
    assert corpus_fingerprint(out) != before


def test_a_live_run_blocks_a_rebuild_but_not_its_own(tmp_path):
    out = prepare_translation(tmp_path / "corpus", user=tmp_path / "live", **SYNTHETIC)
    lock = RunLock(tmp_path / "live" / ".lock").acquire()  # the run is training (no checkpoint yet)
    try:
        with pytest.raises(CorpusInUseError, match="it is running"):
            prepare_translation(out, **{**SYNTHETIC, "seed": 1}, user=tmp_path / "other")
        prepare_translation(out, **{**SYNTHETIC, "seed": 1}, user=tmp_path / "live")  # the run itself may rebuild
    finally:
        lock.release()


def _recipe(tmp_path, run, *extra):
    path = tmp_path / f"{run}.yaml"
    path.write_text(RECIPE.format(out=tmp_path / run, data=tmp_path / "corpus"))
    return [str(path), *extra]


def test_cli_refuses_to_rebuild_a_trained_runs_corpus(tmp_path, capsys):
    """Run A trains on the corpus; run B with data.prepare.seed=1 is refused with one line (it rebuilt it)."""
    assert train_cli.main(_recipe(tmp_path, "a", "train.max_updates=2", "train.validate_interval_updates=0",
                                  "train.save_interval_updates=2")) == 0
    before = corpus_fingerprint(tmp_path / "corpus")
    capsys.readouterr()
    assert train_cli.main(_recipe(tmp_path, "b", "data.prepare.seed=1", "train.max_updates=2")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing to rebuild the prepared corpus")
    assert str(tmp_path / "a") in err[0] and "data.prepare.overwrite=true" in err[0]
    assert corpus_fingerprint(tmp_path / "corpus") == before
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


@pytest.mark.parametrize("case", ["empty", "budget"])
def test_unusable_valid_split_is_refused_at_setup(tmp_path, capsys, case):
    """An empty valid file, or data.valid_max_tokens below a valid pair: one line naming the split and the file,
    before any training."""
    from seqba.data.synthetic import generate_pairs

    pairs = generate_pairs(200, seed=4)
    files = {}
    for split, part in (("train", pairs[:180]), ("valid", [] if case == "empty" else pairs[180:])):
        for key, lang, side in (("src", "en", 0), ("tgt", "de", 1)):
            files[f"{split}_{key}"] = tmp_path / f"{split}.{lang}"
            files[f"{split}_{key}"].write_text("".join(p[side] + "\n" for p in part), encoding="utf-8")
    prepare = ", ".join(f"{k}: {v}" for k, v in files.items())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", data=tmp_path / "corpus").replace(
        "prepare: {preset: synthetic, vocab_size: 200, synthetic_train: 600, synthetic_valid: 40, synthetic_test: 40}",
        f"prepare: {{preset: null, vocab_size: 150, {prepare}}}"))
    extra = ["data.valid_max_tokens=8"] if case == "budget" else []
    assert train_cli.main([str(recipe), *extra]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(files["valid_src"]) in err[0], err
    expected = ("valid split", "is empty") if case == "empty" else ("data.valid_max_tokens=8", "line 1 of")
    assert all(text in err[0] for text in expected), err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

"""Bad inputs of issue 19 that must be one ``error:`` line, found before any work (items 6, 8, 13, 14, 16, 18).

A tiny translation run (the ``runs.py`` recipe) is trained once per module; the other checkpoints are model files
written directly (the checks under test run before a model is evaluated).
"""
import dataclasses
import gzip
import logging
import shutil
import subprocess

import numpy as np
import pytest
import torch

from seqba import analyze as analyze_cli
from seqba import checkpoint as checkpoint_lib
from seqba import config as config_lib
from seqba import eval as eval_cli
from seqba import search
from seqba import train as train_cli
from seqba.data.images import load_mnist
from seqba.data.lm import load_corpus
from seqba.models.transformer import Transformer
from seqba.tasks import image_classification, translation

from runs import RECIPE, ROOT

MNIST = ROOT / "recipes" / "resnet_mnist_m4.yaml"
LM = ROOT / "recipes" / "awd_lstm_ptb_small_m10.yaml"
LM_TINY = ["model.emb_size=8", "model.hidden_size=16", "model.num_layers=2", "data.batch_size=2", "data.bptt=5",
           "data.eval_batch_size=2", "train.max_updates=2", "train.validate_interval_updates=0",
           "train.save_interval_updates=0", "train.progress_bar=false"]


def error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


def one_error(capsys, *fragments):
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny translation run (2 updates): its folder."""
    root = tmp_path_factory.mktemp("tiny")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE.format(out=root / "run", data=root / "data"))
    assert train_cli.main([str(recipe), "train.max_updates=2", "train.save_interval_updates=2",
                           "train.validate_interval_updates=2"]) == 0
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return root / "run"


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if translation decodes anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("decoding started before the options were checked")

    monkeypatch.setattr(translation, "translate", refuse)


def image_model_file(path, overrides=()):
    """A model file of a tiny MNIST ResNet (untrained)."""
    cfg = config_lib.load(MNIST, ["model.depth=8", "model.width=4", *overrides])
    model = image_classification.build_model(cfg)
    checkpoint_lib.save_model_file(path, model.state_dict(), config_lib.to_dict(cfg), {"step": 0})
    return path


# -- 16. --beam above the vocabulary -----------------------------------------------------------------------------


def test_beam_above_the_vocabulary_is_refused_before_decoding():
    model = Transformer(20, d_model=8, ffn_dim=16, num_heads=2, encoder_layers=1, decoder_layers=1).eval()
    source = [torch.tensor([5, 6, 3])]
    with pytest.raises(ValueError, match=r"beam size 20 is larger than the vocabulary size - 1 \(19\)"):
        search.translate(model, source, beam=20)
    assert len(search.translate(model, source, beam=19, max_len_b=2)) == 1  # fairseq's cap itself is fine


def test_eval_beam_100000_is_one_line(run, capsys):
    assert eval_cli.main(["--checkpoint", str(run), "--beam", "100000"]) == 2
    one_error(capsys, "beam size 100000", "vocabulary size - 1 (199)")


# -- 18. options of another task, cutout larger than the image ---------------------------------------------------


def test_tta_on_a_translation_checkpoint_is_refused(run, capsys, no_decoding):
    assert eval_cli.main(["--checkpoint", str(run), "--tta", "4"]) == 2
    one_error(capsys, "--tta (a image_classification option)", "translation checkpoint")


def test_beam_on_an_image_checkpoint_is_refused(tmp_path, capsys):
    path = image_model_file(tmp_path / "checkpoint_last.pt")
    assert eval_cli.main(["--checkpoint", str(path), "--beam", "2", "--bf16"]) == 2
    one_error(capsys, "--beam (a translation option)", "--bf16", "image_classification checkpoint")


def test_cutout_larger_than_the_image_names_the_key(capsys):
    assert train_cli.main([str(MNIST), "data.cutout_size=100", "--print-config"]) == 2
    one_error(capsys, "data.cutout_size", "100", "28x28")
    assert train_cli.main([str(MNIST), "data.cutout_size=28", "--print-config"]) == 0


# -- 18. tied embeddings are saved without Accelerate's warning and reloaded tied --------------------------------


def test_tied_embeddings_save_without_warning_and_reload_tied(tmp_path, caplog):
    from accelerate import Accelerator

    model = Transformer(30, d_model=8, ffn_dim=16, num_heads=2, encoder_layers=1, decoder_layers=1)
    assert model.encoder_embed.weight is model.decoder_embed.weight
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(model)
    with caplog.at_level(logging.WARNING):
        path = checkpoint_lib.save_checkpoint(accelerator, tmp_path, 1, {"loop": {}})
    assert not [r for r in caplog.records if "shared tensor" in r.getMessage()]
    saved = model.decoder_embed.weight.detach().clone()
    with torch.no_grad():
        model.decoder_embed.weight.zero_()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        checkpoint_lib.load_checkpoint(accelerator, path)
    assert not [r for r in caplog.records if "shared" in r.getMessage() or "missing" in r.getMessage().lower()]
    assert model.encoder_embed.weight is model.decoder_embed.weight
    assert model.encoder_embed.weight.data_ptr() == model.decoder_embed.weight.data_ptr()
    assert torch.equal(model.decoder_embed.weight, saved)


# -- 13. output files checked before decoding / analyzing --------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (root writes through permissions, not through a read-only mount); ``put(*files)`` copies
    files into it first (the mount is remounted read-write for that)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True) if shutil.which("mount") else None
    if proc is None or proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {proc.stderr.strip() if proc else 'no mount'}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def put(mount, *files):
    """Copy ``files`` into the read-only mount ``mount``."""
    subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    for f in files:
        shutil.copy(f, mount / f.name)
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


@pytest.mark.parametrize("option", ["--output", "--metrics-out"])
def test_eval_output_in_a_missing_folder_is_refused_first(run, tmp_path, capsys, option, no_decoding):
    target = tmp_path / "missing" / "out.txt"
    assert eval_cli.main(["--checkpoint", str(run), option, str(target)]) == 2
    one_error(capsys, option, f"folder {target.parent} does not exist")


@pytest.mark.parametrize("option", ["--output", "--metrics-out"])
def test_eval_output_on_a_read_only_filesystem_is_refused_first(run, read_only_dir, capsys, option, no_decoding):
    target = read_only_dir / "out.txt"
    assert eval_cli.main(["--checkpoint", str(run), option, str(target)]) == 2
    one_error(capsys, option, str(target), "cannot write there", "Read-only file system")


def test_eval_default_hypotheses_file_is_checked_first(run, read_only_dir, capsys, no_decoding):
    put(read_only_dir, run / "checkpoint_best.pt")  # hyp.test.txt would go beside it, on a read-only filesystem
    assert eval_cli.main(["--checkpoint", str(read_only_dir)]) == 2
    one_error(capsys, "--output", str(read_only_dir / "hyp.test.txt"), "Read-only file system")


def test_analyze_out_is_checked_before_the_gradients(run, tmp_path, read_only_dir, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("gradients computed before --out was checked")

    monkeypatch.setattr(analyze_cli, "grad_correlation", refuse)
    for out, fragment in ((tmp_path / "missing" / "g.json", "does not exist"),
                          (read_only_dir / "g.json", "Read-only file system")):
        assert analyze_cli.main(["grad-correlation", "--checkpoint", str(run), "--samples", "2",
                                 "--out", str(out)]) == 2
        one_error(capsys, "--out", str(out), fragment)
    monkeypatch.setattr(analyze_cli, "plot_grad_norm", refuse)
    assert analyze_cli.main(["grad-norm", str(run), "--out", str(read_only_dir / "fig.png")]) == 2
    one_error(capsys, "--out", "Read-only file system")


# -- 6. eval refuses a checkpoint trained on another corpus ------------------------------------------------------


def test_eval_refuses_a_checkpoint_of_another_corpus(run, tmp_path, capsys, monkeypatch):
    cfg, state, meta = checkpoint_lib.load_model_file(run)
    path = tmp_path / "checkpoint_best.pt"
    checkpoint_lib.save_model_file(path, state, config_lib.to_dict(cfg), {**meta, "corpus": "aaaa1111"})
    monkeypatch.setattr(translation, "SPEC", dataclasses.replace(translation.SPEC, fingerprint=lambda c: "bbbb2222"))
    assert eval_cli.main(["--checkpoint", str(path), "--beam", "1", "--max-len-b", "2"]) == 2
    one_error(capsys, "aaaa1111", "bbbb2222", str(cfg.data.prepared_dir))
    monkeypatch.setattr(translation, "SPEC", dataclasses.replace(translation.SPEC, fingerprint=lambda c: "aaaa1111"))
    assert eval_cli.main(["--checkpoint", str(path), "--beam", "1", "--max-len-b", "2"]) == 0


def test_resume_refuses_a_checkpoint_of_another_corpus_and_leaves_the_run_alone(run, capsys, monkeypatch):
    """Resuming on a corpus rebuilt since the checkpoint was written is one line naming both fingerprints; the
    run folder is not touched (the checkpoint and the metrics stay as they were)."""
    recorded = translation.SPEC.fingerprint(config_lib.load(run.parent / "tiny.yaml", []))
    before = {p.name: p.read_bytes() for p in (run / "checkpoint_last.pt", run / "metrics.jsonl")}
    monkeypatch.setattr(translation, "SPEC", dataclasses.replace(translation.SPEC, fingerprint=lambda c: "bbbb2222"))
    capsys.readouterr()
    assert train_cli.main([str(run.parent / "tiny.yaml"), "train.max_updates=4", "train.resume=auto"]) != 0
    one_error(capsys, "cannot resume from", recorded, "bbbb2222", "in another output_dir")
    assert {p.name: p.read_bytes() for p in (run / "checkpoint_last.pt", run / "metrics.jsonl")} == before
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


# -- 14. unreadable corpus files name the file -------------------------------------------------------------------


def write_idx(folder, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    head = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + images.tobytes()))
    head = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(head + labels.tobytes()))


def test_truncated_mnist_gz_names_the_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    write_idx(folder, rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), np.arange(50, dtype=np.uint8) % 10)
    images = folder / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(ValueError, match="is not a complete gzip file"):
        load_mnist(folder, "train")
    assert train_cli.main([str(MNIST), f"data.root={folder}", "model.depth=8", "model.width=4",
                           f"output_dir={tmp_path / 'run'}", "train.progress_bar=false"]) == 1
    one_error(capsys, str(images), "not a complete gzip file")


def ptb(folder, valid=b"a b\n", train=b"a b c\nb c a\n" * 20):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ptb.train.txt").write_bytes(train)
    (folder / "ptb.valid.txt").write_bytes(valid)
    (folder / "ptb.test.txt").write_bytes(b"a b c\n")
    return folder


def test_non_utf8_ptb_names_the_file_and_line(tmp_path, capsys):
    folder = ptb(tmp_path / "ptb", valid=b"a b\nc \xff a\n")
    with pytest.raises(ValueError, match=r"ptb\.valid\.txt:2: not UTF-8"):
        load_corpus(folder)
    assert train_cli.main([str(LM), f"data.root={folder}", f"output_dir={tmp_path / 'run'}", *LM_TINY]) == 1
    one_error(capsys, str(folder / "ptb.valid.txt") + ":2", "not UTF-8")


# -- 8. an empty validation split is found at setup ---------------------------------------------------------------


def test_empty_ptb_valid_is_found_at_setup(tmp_path, capsys):
    folder = ptb(tmp_path / "ptb", valid=b"")
    out = tmp_path / "run"
    assert train_cli.main([str(LM), f"data.root={folder}", f"output_dir={out}", *LM_TINY]) == 2
    one_error(capsys, "valid split", str(folder / "ptb.valid.txt"), "data.eval_batch_size=2")
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_empty_image_validation_split_is_found_at_setup(tmp_path, capsys):
    folder = tmp_path / "mnist"  # one digit per class: the stratified 20% test split rounds to nothing
    write_idx(folder, np.zeros((10, 28, 28), dtype=np.uint8), np.arange(10, dtype=np.uint8))
    out = tmp_path / "run"
    assert train_cli.main([str(MNIST), f"data.root={folder}", "model.depth=8", "model.width=4", "data.batch_size=2",
                           f"output_dir={out}", "train.progress_bar=false"]) == 2
    one_error(capsys, "test (validation) split of mnist", str(folder), "no images")
    assert not (out / "checkpoints").exists()

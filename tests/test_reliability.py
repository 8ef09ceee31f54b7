"""The reliability defects of issue 8, each reproduced through the real CLI (tiny Transformer, CPU).

Kills are injected from outside the loop (tests/killrun.py): after an update, after a checkpoint, inside a
checkpoint write, or before a model file is written.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from seqba import checkpoint as checkpoint_lib
from seqba import eval as eval_cli
from seqba import train as train_cli
from seqba.data.translation import TranslationDataset
from seqba.runlock import RunLock
from seqba.samplers import TokenBudgetBatchSampler

from runs import ROOT, data_dir, losses, recipe, run_module  # noqa: F401 (fixtures)

QUIET = ["train.validate_interval_updates=0"]


def valid_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "valid_loss" in line]


def steps(run):
    return sorted(p.name for p in (run / "checkpoints").glob("step_*"))


def batches_per_epoch(data_dir, max_tokens=256):
    lengths = TranslationDataset(data_dir, "train").num_tokens
    return len(TokenBudgetBatchSampler(lengths, max_tokens, required_batch_size_multiple=8, seed=3))


# -- 1. exact resume with update_freq ------------------------------------------------------------------------------


def test_resume_inside_an_epoch_with_update_freq_is_exact(recipe, data_dir, tmp_path):
    """An epoch whose batch count is not a multiple of update_freq ends with a short update; the epoch-end
    checkpoint falls on an update boundary, so a kill right after it resumes to the same losses."""
    assert train_cli.main([str(recipe), "train.max_updates=1", *QUIET]) == 0  # prepares the corpus
    n = batches_per_epoch(data_dir)
    update_freq = next(k for k in (3, 4, 5, 7) if n % k)
    per_epoch = -(-n // update_freq)
    common = [recipe, *QUIET, f"train.update_freq={update_freq}", f"train.max_updates={per_epoch + 2}",
              "model.dropout=0.1"]
    run_module("seqba.train", *common, f"output_dir={tmp_path / 'straight'}")
    assert valid_steps(tmp_path / "straight") == [per_epoch, per_epoch + 2]  # epoch end, then the end
    killed = run_module("killrun", "--after-save", per_epoch, *common, f"output_dir={tmp_path / 'killed'}",
                        check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_module("seqba.train", *common, f"output_dir={tmp_path / 'killed'}")
    straight, again = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert again.keys() == straight.keys() == set(range(1, per_epoch + 3))
    for step in (per_epoch + 1, per_epoch + 2):
        assert again[step] == straight[step], step


@pytest.mark.parametrize("kill_at", [1, 2])
def test_kill_inside_a_checkpoint_write_resumes_exactly(recipe, tmp_path, kill_at):
    """SIGKILL at the rename of the new folder (1) or of ``latest`` (2) of the update-4 checkpoint."""
    common = [recipe, *QUIET, "train.save_interval_updates=2", "train.max_updates=6"]
    run_module("seqba.train", *common, f"output_dir={tmp_path / 'straight'}")
    # replaces: step 2 -> folder, latest, checkpoint_last.pt; step 4 -> folder (4), latest (5)
    killed = run_module("killrun", "--at-replace", 3 + kill_at, *common, f"output_dir={tmp_path / 'killed'}",
                        check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_module("seqba.train", *common, f"output_dir={tmp_path / 'killed'}")
    assert "resumed from" in resumed.stderr
    straight, again = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert again == straight


# -- 2. one run per output_dir --------------------------------------------------------------------------------------


def test_second_run_on_the_same_output_dir_is_refused(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(run / ".lock"):
        assert train_cli.main([str(recipe), "train.max_updates=1", *QUIET]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"pid {os.getpid()}" in err and "in use" in err
    assert not (run / "metrics.jsonl").exists()


def test_lock_of_a_killed_run_is_stale(recipe, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from seqba.runlock import RunLock; "
                               f"RunLock({str(run / '.lock')!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert train_cli.main([str(recipe), "train.max_updates=1", *QUIET]) == 0


# -- 3. eval numeric arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--lenpen", "nan"], ["--lenpen", "inf"], ["--max-len-b", "-1"], ["--beam", "0"],
                                  ["--max-len-a", "-0.5"], ["--max-tokens", "0"], ["--tta", "-1"], ["--beam", "2.5"]])
def test_eval_rejects_bad_numbers(tmp_path, args, capsys):
    with pytest.raises(SystemExit) as exit_:
        eval_cli.main(["--checkpoint", str(tmp_path / "x.pt"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument " + args[0])


# -- 4. non-finite weights ------------------------------------------------------------------------------------------


def test_blow_up_keeps_a_finite_checkpoint_to_resume_from(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli.main([str(recipe), "train.max_updates=2", *QUIET, "train.keep_checkpoints=1"]) == 0
    capsys.readouterr()
    code = train_cli.main([str(recipe), "optim.lr=1e30", "optim.warmup_updates=0", "train.max_updates=40",
                           "train.save_interval_updates=1", *QUIET, "train.keep_checkpoints=1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "known to be finite is" in err and "step_0000002" in err
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_0000002"
    weights = checkpoint_lib.load_model_file(run / "checkpoint_last.pt")[1]
    assert all(torch.isfinite(w).all() and w.abs().max() < 1e6 for w in weights.values())
    assert (run / "checkpoints" / "nonfinite_step_0000003").is_dir()  # set aside, not deleted
    # and the run continues from the good checkpoint
    assert train_cli.main([str(recipe), "train.max_updates=3", *QUIET]) == 0
    assert losses(run).keys() == {1, 2, 3}


def test_blow_up_before_any_checkpoint_says_so(recipe, tmp_path, capsys):
    code = train_cli.main([str(recipe), "optim.lr=1e30", "optim.warmup_updates=0", "train.max_updates=40", *QUIET])
    assert code == 1
    assert "No checkpoint known to be finite" in capsys.readouterr().err


# -- 5. kill after the final checkpoint -----------------------------------------------------------------------------


def test_kill_before_the_last_model_file_is_repaired_on_rerun(recipe, tmp_path):
    common = [recipe, *QUIET, "train.save_interval_updates=2", "train.max_updates=4", "train.keep_checkpoints=1"]
    run = tmp_path / "run"
    killed = run_module("killrun", "--before-model-file", "checkpoint_last.pt:4", *common, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["step"] == 2
    rerun = run_module("seqba.train", *common)
    assert "already finished" in rerun.stderr
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["step"] == 4
    assert steps(run) == ["step_0000004"]


# -- 6. latest names a missing or incomplete checkpoint -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "no_trainer_state"])
def test_broken_latest_falls_back_to_the_newest_complete_checkpoint(recipe, tmp_path, damage):
    common = [recipe, *QUIET, "train.save_interval_updates=2", "train.keep_checkpoints=0"]
    run = tmp_path / "run"
    run_module("seqba.train", *common, "train.max_updates=6")
    ckpt = run / "checkpoints" / "step_0000006"
    if damage == "missing":
        shutil.rmtree(ckpt)
    else:
        os.remove(ckpt / "trainer_state_0.pt")
        os.remove(ckpt / "complete.json")
    before = losses(run)
    resumed = run_module("seqba.train", *common, "train.max_updates=8")
    assert "resuming from the newest complete checkpoint step_0000004" in resumed.stderr
    assert "resumed from" in resumed.stderr and "at update 4" in resumed.stderr
    after = losses(run)
    assert {s: after[s] for s in range(1, 5)} == {s: before[s] for s in range(1, 5)}  # never restarted from 0
    assert {"step_0000002", "step_0000004", "step_0000008"} <= set(steps(run))  # complete ones kept


def test_interrupted_replace_is_repaired(tmp_path):
    """A crash between the two renames of a same-step replace: step_N missing, .tmp_ (new) and .old_ complete."""
    root = tmp_path / "checkpoints"
    for name in (".tmp_step_0000004", ".old_step_0000004", "step_0000002"):
        (root / name).mkdir(parents=True)
        (root / name / "complete.json").write_text("{}")
    (root / "latest").write_text("step_0000004\n")
    assert checkpoint_lib.latest_checkpoint(tmp_path) == root / "step_0000004"
    assert not (root / ".tmp_step_0000004").exists()


def test_only_incomplete_checkpoints_refuse_to_restart_from_zero(tmp_path):
    (tmp_path / "checkpoints" / "step_0000004").mkdir(parents=True)
    with pytest.raises(checkpoint_lib.CheckpointError, match="none is complete"):
        checkpoint_lib.latest_checkpoint(tmp_path)


# -- 7. eval outputs beside the checkpoint --------------------------------------------------------------------------


def test_eval_of_a_run_dir_writes_hypotheses_inside_it(recipe, tmp_path):
    assert train_cli.main([str(recipe), "train.max_updates=2", *QUIET]) == 0
    assert eval_cli.main(["--checkpoint", str(tmp_path / "run"), "--beam", "1", "--max-len-b", "5"]) == 0
    assert (tmp_path / "run" / "hyp.test.txt").is_file() and not (tmp_path / "hyp.test.txt").exists()


# -- 8. config ------------------------------------------------------------------------------------------------------


def test_config_edge_cases(recipe, tmp_path, capsys):
    from seqba import config as config_lib
    from seqba.errors import ConfigError

    assert config_lib.load(recipe, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    (tmp_path / "no.yaml").write_text(recipe.read_text().replace("progress_bar: false",
                                                                 "progress_bar: false, mixed_precision: no"))
    assert config_lib.load(tmp_path / "no.yaml").train.mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"^command-line override ba\.repeats: must be >= 1"):
        config_lib.load(recipe, ["ba.repeats=0"])
    with pytest.raises(ConfigError, match=r"^command-line override optim\.lr: expected a finite number"):
        config_lib.load(recipe, ["optim.lr=nan"])
    (tmp_path / "nan.yaml").write_text(recipe.read_text().replace("lr: 0.003", "lr: .nan"))
    with pytest.raises(ConfigError, match=r"nan\.yaml:9: optim\.lr: expected a finite number"):
        config_lib.load(tmp_path / "nan.yaml")
    (tmp_path / "list.yaml").write_text("- task: translation\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_lib.load(tmp_path / "list.yaml", ["ba.repeats=2"])
    (tmp_path / "latin1.yaml").write_bytes(b"task: translation\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: not UTF-8"):
        config_lib.load(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: 'fp8' is not one of no, fp16, bf16"):
        config_lib.load(recipe, ["train.mixed_precision=fp8"])
    # through the CLI: one error line, exit 2, nothing written
    assert train_cli.main([str(tmp_path / "list.yaml"), "ba.repeats=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


# -- 9. one error line instead of a traceback -----------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", "truncated", b"hello", b"abc",
                                     b"task: translation\nseed: 1\n"])
def test_eval_of_a_broken_checkpoint_is_one_error_line(recipe, tmp_path, content, capsys):
    path = tmp_path / "broken.pt"
    if content == "truncated":
        assert train_cli.main([str(recipe), "train.max_updates=1", *QUIET]) == 0
        data = (tmp_path / "run" / "checkpoint_last.pt").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    capsys.readouterr()
    assert eval_cli.main(["--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}") and "not a readable checkpoint" in err[0]


def test_eval_of_a_torch_file_that_is_not_a_model_file(tmp_path, capsys):
    path = tmp_path / "other.pt"
    for blob in ({"config": "a string", "model": {}}, {"config": {}, "model": [1]}, [1, 2]):
        torch.save(blob, path)
        assert eval_cli.main(["--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {path} is not a seqba model file"), err


def test_eval_checks_its_output_and_device_before_evaluating(tmp_path, capsys):
    missing = tmp_path / "nowhere.pt"  # the argument checks come first: no checkpoint is read
    for args, message in ((["--metrics-out", str(tmp_path / "new" / "m.json")], "folder"),
                          (["--metrics-out", str(tmp_path)], "is a folder")):
        assert eval_cli.main(["--checkpoint", str(missing), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --metrics-out") and message in err[0], err
    if not torch.cuda.is_available():
        assert eval_cli.main(["--checkpoint", str(missing), "--device", "cuda"]) == 2
        assert capsys.readouterr().err.startswith("error: --device cuda: this torch build sees no CUDA device")


def test_full_disk_is_one_error_line(recipe, tmp_path, capsys, monkeypatch):
    from seqba import checkpoint as ckpt

    def no_space(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(ckpt.torch, "save", no_space)
    assert train_cli.main([str(recipe), "train.max_updates=2", "train.save_interval_updates=1", *QUIET]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no space left on device while writing (") and str(tmp_path) in err[-1]


def test_resume_from_a_missing_path_is_a_config_error(recipe, tmp_path, capsys):
    assert train_cli.main([str(recipe), f"train.resume={tmp_path / 'nope'}"]) == 2
    assert "command-line override train.resume: no checkpoint directory" in capsys.readouterr().err


def test_unreachable_hub_says_how_to_run_from_local_files(recipe, tmp_path, capsys, monkeypatch):
    from seqba.data import prepare

    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(prepare, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # restored after the test, whatever prepare sets
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
        for module in (datasets.config, huggingface_hub.constants):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))
    started = time.perf_counter()
    code = train_cli.main([str(recipe), "data.prepare.preset=wmt16", f"data.prepared_dir={tmp_path / 'wmt16'}",
                           "train.max_updates=1"])
    assert code == 1 and time.perf_counter() - started < 20
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: loading wmt16 de-en from the Hugging Face hub is unreachable")
    assert "data.prepare.train_src=" in err and "HF_DATASETS_OFFLINE=1" in err


# -- 10. a failed resume leaves the run's config alone --------------------------------------------------------------


def test_failed_resume_keeps_config_yaml(recipe, tmp_path, capsys):
    assert train_cli.main([str(recipe), "train.max_updates=1", *QUIET]) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert train_cli.main([str(recipe), "train.max_updates=2", "model.d_model=64", *QUIET]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot resume from") and "another model" in err[-1]
    assert (tmp_path / "run" / "config.yaml").read_text() == config


# -- 11. smaller ----------------------------------------------------------------------------------------------------


def test_byte_order_mark_is_dropped(tmp_path):
    from seqba.data.prepare import read_lines

    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffHallo Welt\nzwei\n".encode("utf-8"))
    assert read_lines(path) == ["Hallo Welt", "zwei"]


def test_interrupted_preparation_leaves_no_build_folder(tmp_path):
    from seqba.data.prepare import prepare_translation

    stale = tmp_path / ".corpus.tmp-killed"
    (stale / "raw").mkdir(parents=True)
    prepare_translation(tmp_path / "corpus", preset="synthetic", vocab_size=100, synthetic_train=200,
                        synthetic_valid=10, synthetic_test=10)
    assert not stale.exists() and (tmp_path / "corpus" / "manifest.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a CUDA GPU")
def test_fp16_without_a_gpu_is_one_error_line(recipe, tmp_path, capsys):
    assert train_cli.main([str(recipe), "train.mixed_precision=fp16", "train.max_updates=1", *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "train.mixed_precision=fp16 needs a CUDA GPU" in err[-1]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

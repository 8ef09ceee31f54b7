"""End-to-end tests of seqba.train / seqba.eval on a tiny Transformer and a tiny synthetic corpus (CPU)."""
import json
import os
import subprocess

import pytest

from seqba import eval as eval_cli
from seqba import train as train_cli

from runs import accelerate_launch_two, KILLRUN, RECIPE, ROOT, data_dir, losses, recipe, run_module  # noqa: F401 (fixtures)


def test_train_then_eval(recipe, tmp_path, capsys):
    assert train_cli.main([str(recipe)]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert len(train_records) == 12
    first = train_records[0]
    for key in ("loss", "nll", "ppl", "lr", "gnorm", "tokens_per_s", "distinct_tokens_per_step", "tokens_per_step"):
        assert key in first, key
    # BA: every step sees M=2 copies of each distinct target token
    assert first["tokens_per_step"] == pytest.approx(2 * first["distinct_tokens_per_step"])
    assert any("valid_ppl" in r for r in records)
    assert (run / "checkpoints" / "latest").is_file()

    capsys.readouterr()
    hyp = tmp_path / "hyp.txt"
    assert eval_cli.main(["--checkpoint", str(run / "checkpoint_best.pt"), "--beam", "4", "--max-len-b", "30",
                          "--output", str(hyp)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sentences"] == 40 and 0.0 <= result["bleu"] <= 100.0 and "nrefs:1" in result["signature"]
    assert len(hyp.read_text().splitlines()) == 40


def test_eval_explicit_src_ref_files(recipe, tmp_path, capsys):
    assert train_cli.main([str(recipe), "train.max_updates=2", "train.validate_interval_updates=0"]) == 0
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("He was born on July 11, 1961.\nThe lesson ends at half past twelve.\n")
    ref.write_text("Er wurde am 11. Juli 1961 geboren.\nDer Unterricht endet um halb eins.\n")
    capsys.readouterr()
    assert eval_cli.main(["--checkpoint", str(tmp_path / "run"), "--src", str(src), "--ref", str(ref), "--beam",
                          "1", "--max-len-b", "5", "--output", str(tmp_path / "out.txt")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sentences"] == 2
    ref.write_text("only one line\n")
    assert eval_cli.main(["--checkpoint", str(tmp_path / "run"), "--src", str(src), "--ref", str(ref)]) == 2
    assert "has 2 lines but" in capsys.readouterr().err


def test_sample_chunks_give_the_same_steps(recipe, tmp_path):
    """Evaluating the M·B batch in 3 chunks gives the same losses as the whole batch (dropout off)."""
    common = ["model.dropout=0.0", "train.max_updates=5", "train.validate_interval_updates=0", "ba.repeats=3"]
    assert train_cli.main([str(recipe), *common, f"output_dir={tmp_path / 'whole'}"]) == 0
    assert train_cli.main([str(recipe), *common, "ba.sample_chunks=3", f"output_dir={tmp_path / 'chunks'}"]) == 0
    whole, chunks = losses(tmp_path / "whole"), losses(tmp_path / "chunks")
    assert whole.keys() == chunks.keys() and len(whole) == 5
    for step in whole:
        assert chunks[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-6)


def test_sampler_side_repetition_matches_device_expansion(recipe, tmp_path):
    """ba.expand_on_device=false (RepeatBatchSampler) and the default (repeat_batch) train identically."""
    common = ["model.dropout=0.0", "train.max_updates=4", "train.validate_interval_updates=0"]
    assert train_cli.main([str(recipe), *common, f"output_dir={tmp_path / 'device'}"]) == 0
    assert train_cli.main([str(recipe), *common, "ba.expand_on_device=false", f"output_dir={tmp_path / 'loader'}"]) == 0
    a, b = losses(tmp_path / "device"), losses(tmp_path / "loader")
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5)


def test_resume_after_sigkill_gives_the_same_losses(recipe, tmp_path):
    common = [recipe, "train.validate_interval_updates=0", "train.save_interval_updates=4", "train.max_updates=10"]
    run_module("seqba.train", *common, f"output_dir={tmp_path / 'straight'}")
    killed = run_module("killrun", "--after-update", 6, *common, f"output_dir={tmp_path / 'killed'}", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert losses(tmp_path / "killed").keys() == set(range(1, 7))
    resumed = run_module("seqba.train", *common, f"output_dir={tmp_path / 'killed'}")
    assert "resumed from" in resumed.stderr
    straight, again = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert again.keys() == straight.keys() == set(range(1, 11))
    for step in range(5, 11):
        assert again[step] == straight[step], step


def test_nan_loss_stops_and_keeps_last_checkpoint(recipe, tmp_path):
    run = tmp_path / "run"
    assert train_cli.main([str(recipe), "train.max_updates=2", "train.validate_interval_updates=0"]) == 0
    good = (run / "checkpoints" / "latest").read_text()
    code = train_cli.main([str(recipe), "optim.lr=1e30", "optim.warmup_updates=0", "train.max_updates=40",
                           "train.save_interval_updates=1000", "train.validate_interval_updates=0"])
    assert code == 1
    assert (run / "checkpoints" / "latest").read_text() == good


def test_cli_rejects_unknown_key(recipe, capsys):
    assert train_cli.main([str(recipe), "ba.repeat=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'repeat'" in err and "repeats" in err


@pytest.mark.parametrize("group_size", [2, 1])
def test_two_processes_with_accelerate_launch(recipe, tmp_path, group_size):
    out = tmp_path / f"run{group_size}"
    proc = subprocess.run(
        [*accelerate_launch_two(), "-m", "seqba.train", str(recipe),
         f"ba.group_size={group_size}", "train.max_updates=4", "train.validate_interval_updates=2", f"output_dir={out}"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr and f"group_size={group_size}" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints" / "step_0000004").glob("trainer_state_*.pt")) == [
        "trainer_state_0.pt", "trainer_state_1.pt"]
    assert len(losses(out)) == 4


def test_rerunning_a_finished_run_trains_nothing(recipe, tmp_path):
    common = [str(recipe), "train.max_updates=3", "train.validate_interval_updates=0"]
    assert train_cli.main(common) == 0
    run = tmp_path / "run"
    before = (run / "checkpoint_last.pt").stat().st_mtime_ns, losses(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a line torn by a kill must not break the resume
    assert train_cli.main(common) == 0
    assert (run / "checkpoint_last.pt").stat().st_mtime_ns == before[0] and losses(run) == before[1]


def test_updates_after_the_last_log_interval_get_a_record(recipe, tmp_path):
    """log_interval 5 over 7 updates: records at 5 and 7 (the last two updates' counts and rates), not at 5 only,
    so a study's training time and tokens cover the whole run."""
    assert train_cli.main([str(recipe), "train.max_updates=7", "train.log_interval=5",
                           "train.validate_interval_updates=0"]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [5, 7]
    assert train_records[1]["tokens_per_s"] > 0 and train_records[1]["tokens_per_step"] > 0


def test_checkpoint_pruning_keeps_the_one_just_written(recipe, tmp_path):
    run = tmp_path / "run"
    assert train_cli.main([str(recipe), "train.max_updates=4", "train.save_interval_updates=2",
                           "train.validate_interval_updates=0", "train.keep_checkpoints=2"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000002", "step_0000004"]
    # resume from the older checkpoint and save: the new step-3 checkpoint must survive pruning
    assert train_cli.main([str(recipe), "train.max_updates=3", "train.validate_interval_updates=0",
                           f"train.resume={run / 'checkpoints' / 'step_0000002'}", "train.keep_checkpoints=1"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    assert (run / "checkpoints" / "step_0000003").is_dir()


def test_update_freq_accumulates_batches(recipe, tmp_path):
    """With update_freq=2 each update consumes two batches: tokens per update double, the update count holds."""
    common = [str(recipe), "train.max_updates=4", "train.validate_interval_updates=0", "model.dropout=0.0"]
    assert train_cli.main([*common, f"output_dir={tmp_path / 'one'}"]) == 0
    assert train_cli.main([*common, "train.update_freq=2", f"output_dir={tmp_path / 'two'}"]) == 0

    def tokens(run):
        return [json.loads(line)["tokens_per_step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                if "tokens_per_step" in line]

    one, two = tokens(tmp_path / "one"), tokens(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert sum(two) == pytest.approx(2 * sum(one), rel=0.35)


def test_tensorboard_tracker_gets_the_metrics_records(recipe, tmp_path):
    """train.log_with=tensorboard: the metrics.jsonl records are in readable event files (issue 12)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train_cli.main([str(recipe), "train.max_updates=4", "train.validate_interval_updates=2",
                           "train.log_with=tensorboard"]) == 0
    events = list((tmp_path / "run" / "trackers").rglob("events.out.tfevents.*"))
    assert events
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4]
    assert scalars["loss"][0][1] == pytest.approx(losses(tmp_path / "run")[1], rel=1e-6)
    assert [s for s, _ in scalars["valid_ppl"]] == [2, 4]

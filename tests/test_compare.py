"""``python -m seqba.compare``: arm derivation per task, the CLI's errors, the report from fake run folders, resume
after a SIGKILL mid-study, and the Slurm launcher through submitit's local executor (with significance)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runs import ROOT, data_dir, recipe  # noqa: F401 - fixtures
from seqba import config as config_lib
from seqba.compare import cli
from seqba.compare.curves import arm_curves, plot_study
from seqba.compare.arms import count_updates, derive_arms, equal_time_overrides, parse_arm
from seqba.compare.report import collect_rows, format_table, write_csv
from seqba.compare.study import Study, EvalSet
from seqba.errors import ConfigError
from test_image_task import write_fake_cifar10
from test_recipes import TINY

RECIPES = ROOT / "recipes"


def no_counting(cfg, num_processes):
    raise AssertionError("a recipe with train.max_updates and a validation interval needs no counting")


def resolved(recipe_path, overrides, arms):
    """arm name -> the config that arm trains with."""
    return {a.name: config_lib.load(recipe_path, [*overrides, *a.overrides]) for a in arms}


# -- arms -------------------------------------------------------------------------------------------------------

def test_arms_translation(recipe):
    arms = derive_arms(recipe, [], ["fixed_steps", "fixed_samples", "ba"], counter=no_counting)
    assert [a.overrides for a in arms] == [["ba.repeats=1"], ["ba.repeats=1", "data.max_tokens=512"], []]
    cfgs = resolved(recipe, [], arms)
    assert [(c.ba.repeats, c.data.max_tokens, c.train.max_updates) for c in cfgs.values()] == [
        (1, 256, 12), (1, 512, 12), (2, 256, 12)]


def test_arms_translation_sample_chunks_and_consistency():
    """WMT16 M=4 with 4 micro-batches and the sym-KL term: fixed_steps (B rows) 1 chunk, fixed_samples (M·B) 4."""
    path = RECIPES / "transformer_wmt16_m4_symkl.yaml"
    cfgs = resolved(path, [], derive_arms(path, [], ["fixed_steps", "fixed_samples", "ba"], counter=no_counting))
    fs, fsa, ba = cfgs["fixed_steps"], cfgs["fixed_samples"], cfgs["ba"]
    assert (fs.ba.repeats, fs.ba.sample_chunks, fs.ba.consistency, fs.data.max_tokens) == (1, 1, "none", 4096)
    assert (fsa.ba.repeats, fsa.ba.sample_chunks, fsa.ba.consistency, fsa.data.max_tokens) == (1, 4, "none", 16384)
    assert (ba.ba.repeats, ba.ba.sample_chunks, ba.ba.consistency, ba.data.max_tokens) == (4, 4, "sym_kl", 4096)
    assert {c.train.max_updates for c in cfgs.values()} == {100000}


def test_forked_arms_come_from_the_task():
    """Translation names two forked arms (TaskSpec.fork_arms): after the encoder and below the last decoder layer;
    a family without forks does not know the names."""
    path = RECIPES / "transformer_multi30k_m4.yaml"
    cfgs = resolved(path, [], derive_arms(path, [], ["ba", "ba_fork_enc", "ba_fork_top"], counter=no_counting))
    assert [c.ba.fork_layer for c in cfgs.values()] == [0, 3, 5]
    assert all(c.ba.repeats == 4 for c in cfgs.values())
    with pytest.raises(ConfigError, match="unknown arm 'ba_fork_enc'"):
        derive_arms(RECIPES / "resnet_mnist_m4.yaml", [], ["ba", "ba_fork_enc"], counter=no_counting)


def test_arms_language_modeling():
    path = RECIPES / "awd_lstm_ptb_small_m10.yaml"
    cfgs = resolved(path, [], derive_arms(path, [], ["fixed_steps", "fixed_samples", "ba"], counter=no_counting))
    assert [(c.ba.repeats, c.data.batch_size, c.train.max_updates) for c in cfgs.values()] == [
        (1, 10, 800), (1, 100, 800), (10, 10, 800)]


def test_arms_language_modeling_epoch_based():
    """awd_lstm_ptb_m10 trains 500 epochs: derived arms get its update count, and validate where ba does."""
    path = RECIPES / "awd_lstm_ptb_m10.yaml"
    arms = derive_arms(path, [], ["fixed_steps", "fixed_samples", "ba"], counter=lambda cfg, n: (663500, 1327))
    cfgs = resolved(path, [], arms)
    assert [(c.ba.repeats, c.data.batch_size, c.train.max_updates, c.train.max_epochs,
             c.train.validate_interval_updates) for c in cfgs.values()] == [
        (1, 20, 663500, 0, 1327), (1, 200, 663500, 0, 1327), (10, 20, 0, 500, 0)]


def test_arms_images_count_updates(tmp_path):
    """CIFAR-10 M=40 (164 epochs) on a 40-image fake CIFAR: 1 batch of 64 per epoch -> 164 updates, counted."""
    path = RECIPES / "resnet44_cifar10_m40.yaml"
    overrides = [f"data.root={write_fake_cifar10(tmp_path / 'cifar')}"]
    cfg = config_lib.load(path, overrides)
    assert count_updates(cfg) == (164, 1)
    arms = derive_arms(path, overrides, ["fixed_steps", "fixed_samples", "ba", "equal_time"])
    cfgs = resolved(path, overrides, arms)
    assert [(c.ba.repeats, c.data.batch_size, c.train.max_updates, c.train.max_epochs) for c in cfgs.values()] == [
        (1, 64, 164, 0), (1, 2560, 164, 0), (40, 64, 0, 164), (1, 64, 164, 0)]
    assert cfgs["fixed_samples"].optim.lr_steps == cfgs["ba"].optim.lr_steps == [63342, 95404]
    assert arms[3].pending and not arms[0].pending


def test_an_equal_time_arm_per_ba_arm():
    """``equal_time_X`` is fixed #steps timed from the listed BA arm X (a forked arm costs less than BA, so it needs
    its own); X and fixed_steps must be listed, and X must be a BA arm."""
    path = RECIPES / "transformer_multi30k_m4.yaml"
    names = ["fixed_steps", "ba", "ba_fork_enc", "equal_time", "equal_time_ba_fork_enc"]
    arms = {a.name: a for a in derive_arms(path, [], names, counter=no_counting)}
    assert arms["equal_time_ba_fork_enc"].pending and arms["equal_time"].pending
    assert arms["equal_time_ba_fork_enc"].overrides == arms["fixed_steps"].overrides == arms["equal_time"].overrides
    assert "(ba_fork_enc s/update) / (fixed_steps s/update)" in arms["equal_time_ba_fork_enc"].note
    assert "(ba s/update)" in arms["equal_time"].note
    for bad, message in ((["fixed_steps", "ba", "equal_time_ba_fork_enc"], "timed from the ba_fork_enc and "
                                                                              "fixed_steps arms: list both"),
                         (["fixed_steps", "ba", "equal_time_fixed_steps"], "not from the baseline fixed_steps"),
                         (["fixed_steps", "ba", "equal_time_"], "unknown arm 'equal_time_'")):
        with pytest.raises(ConfigError, match=message):
            derive_arms(path, [], bad, counter=no_counting)


def test_an_equal_time_arm_is_timed_from_its_own_arm(tmp_path):
    """resolve_pending reads the seconds per update of the arm an equal-time arm is timed from."""
    from seqba.compare.runs import RunSpec
    from seqba.compare.study import make_study, resolve_pending

    path = RECIPES / "transformer_multi30k_m4.yaml"
    names = ["fixed_steps", "ba", "ba_fork_enc", "equal_time", "equal_time_ba_fork_enc"]
    arms = derive_arms(path, ["train.max_updates=100"], names, counter=no_counting)
    study = make_study(tmp_path / "study", path, ["train.max_updates=100"], arms, [1], [])
    for arm, rate in (("fixed_steps", 1000.0), ("ba", 250.0), ("ba_fork_enc", 500.0)):  # tokens/s, 100 per update
        run = study.run_dir(arm, 1)
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 100, "tokens_per_step": 100.0,
                                                       "tokens_per_s": rate}) + "\n")
    updates = {}
    for name in ("equal_time", "equal_time_ba_fork_enc"):
        spec = resolve_pending(study, RunSpec(name, 1, str(study.run_dir(name, 1)), [], pending=True))
        updates[name] = config_lib.load(spec.train_args[0], spec.train_args[1:]).train.max_updates
    assert updates == {"equal_time": 400, "equal_time_ba_fork_enc": 200}


def test_equal_time_overrides():
    """BA takes 0.4 s/update, fixed_steps 0.1 s: equal_time trains 4x the updates, lr milestones 4x later."""
    path = RECIPES / "resnet_mnist_m4.yaml"
    arm = derive_arms(path, [], ["ba", "fixed_steps", "equal_time"], counter=lambda cfg, n: (500, 125))[2]
    cfg = config_lib.load(path, arm.overrides)
    overrides = equal_time_overrides(arm, cfg, 0.4, 0.1)
    assert overrides == ["ba.repeats=1", "train.max_updates=2000", "train.max_epochs=0", "optim.lr_steps=[1000,1500]"]
    final = config_lib.load(path, overrides)
    assert (final.train.max_updates, final.optim.lr_steps, final.ba.repeats) == (2000, [1000, 1500], 1)


def test_custom_arm():
    arm = parse_arm("ba_symkl:ba.consistency=sym_kl,ba.consistency_alpha=10,optim.lr_steps=[1,2]")
    assert arm.overrides == ["ba.consistency=sym_kl", "ba.consistency_alpha=10", "optim.lr_steps=[1,2]"]
    for bad in ("nocolon", "ba:ba.repeats=2", "x:", "x:novalue"):
        with pytest.raises(ConfigError):
            parse_arm(bad)


@pytest.mark.parametrize("argv, message", [
    (["--arms", "ba,bogus"], "error: unknown arm 'bogus'"),
    (["--arms", "ba,x", "--arm", "x:ba.nosuchkey=1"], "error: arm x: command-line override ba.nosuchkey"),
    (["--test-set", "extra=missing.en,missing.de"], "error: --test-set 'extra=missing.en,missing.de': file not found"),
    (["--test-set", "extra"], "error: --test-set 'extra': expected NAME=SRC,REF"),
    (["--seeds", "1,x"], "error: --seeds '1,x'"),
    (["seed=3"], "error: override 'seed=3': compare sets seed"),
    (["--arms", "ba,x", "--arm", "x:seed=5"], "error: --arm x: override 'seed=5': compare sets seed"),
    (["--arms", "ba,,fixed_steps"], "error: --arms 'ba,,fixed_steps': expected comma-separated arm names"),
    (["--arms", ""], "error: --arms '': expected comma-separated arm names"),
    (["--arms", "ba", "--arm", "x:ba.repeats=2"], "error: --arm x is defined but not listed in --arms 'ba'"),
    (["--arms", "ba,x", "--arm", "x:ba.repeats=2", "--arm", "x:ba.repeats=3"], "error: --arm x is defined twice"),
    (["--eval-args=--beam=0"], "error: --eval-args '--beam=0': argument --beam: must be >= 1"),
    (["--eval-args=--nosuch"], "error: --eval-args '--nosuch': unrecognized arguments: --nosuch"),
    (["--eval-args=--split valid"], "error: --eval-args '--split valid': --split is set per run by seqba.compare"),
    (["--report-only"], "error: --report-only: no study at"),
])
def test_cli_errors_are_one_line(recipe, tmp_path, capsys, argv, message):
    assert cli.main([str(recipe), "--out", str(tmp_path / "study"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "study").exists()


def test_cli_test_set_needs_translation(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("x\n")
    argv = [str(RECIPES / "awd_lstm_ptb_small_m10.yaml"), "--out", str(tmp_path / "s"), f"--test-set=x={src},{src}"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: --test-set applies to translation")


# -- report from fake run folders ----------------------------------------------------------------------------------

def fake_run(run_dir, per_step, per_s, accuracy, wall, valid_losses=(1.0, 1.0)):
    """Two windows of 10 updates of ``per_step`` images at ``per_s`` images/s, 64 distinct per update; validations
    at updates 10 and 20 with ``valid_losses``."""
    run_dir.mkdir(parents=True)
    records = []
    for step, valid_loss in zip((10, 20), valid_losses):
        records.append({"step": step, "epoch": 0, "loss": 1.0, "images_per_step": per_step, "images_per_s": per_s,
                        "distinct_images_per_step": 64.0})
        records.append({"step": step, "epoch": 0, "valid_accuracy": accuracy - 0.1, "valid_loss": valid_loss})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "train.done").write_text(json.dumps({"wall_seconds": wall}))
    (run_dir / "eval.test.json").write_text(json.dumps({"task": "image_classification", "accuracy": accuracy}))


def test_table_and_csv_from_fake_runs(tmp_path):
    study = Study(out=str(tmp_path), recipe=str(RECIPES / "resnet44_cifar10_m40.yaml"), task="image_classification",
                  overrides=[], arms={"fixed_steps": ["ba.repeats=1"], "ba": []}, seeds=[1, 2],
                  test_sets=[EvalSet("test")], updates_per_epoch={"fixed_steps": 10, "ba": 10})
    fake_run(study.run_dir("fixed_steps", 1), 64.0, 640.0, 0.90, 30.5, (0.5, 0.7))
    fake_run(study.run_dir("fixed_steps", 2), 64.0, 640.0, 0.92, 31.5, (0.9, 0.7))
    fake_run(study.run_dir("ba", 1), 256.0, 512.0, 0.95, 60.0, (0.6, 0.4))
    fake_run(study.run_dir("ba", 2), 256.0, 512.0, 0.97, 62.0, (0.4, 0.4))
    study.seeds = [1, 2, 3]
    fake_run(study.run_dir("fixed_steps", 3), 64.0, 640.0, 0.10, 1.0, (9.0, 9.0))
    (study.run_dir("fixed_steps", 3) / "train.done").unlink()  # still training: in no output
    arms = ["fixed_steps", "ba"]
    rows = collect_rows(study, arms)
    write_csv(rows, tmp_path / "results.csv")
    assert (tmp_path / "results.csv").read_text() == (
        "arm,seed,updates,epochs_seen,distinct_images_seen,images_computed,train_seconds,wall_seconds,"
        "images_per_s,model_flops,best_valid_loss,best_valid_update,final_valid_loss,test_accuracy\n"
        "fixed_steps,1,20,2.0,1280,1280,2.0,30.5,640.0,,0.5,10,0.7,0.9\n"
        "fixed_steps,2,20,2.0,1280,1280,2.0,31.5,640.0,,0.7,20,0.7,0.92\n"
        "ba,1,20,2.0,1280,5120,10.0,60.0,512.0,,0.4,20,0.4,0.95\n"
        "ba,2,20,2.0,1280,5120,10.0,62.0,512.0,,0.4,10,0.4,0.97\n")  # a tie: the first update; no FLOPs logged
    table = format_table(study, rows, arms, "resnet44_cifar10_m40").splitlines()
    assert table[:4] == [
        "| arm | n | updates | epochs seen | train s | best valid loss | test accuracy (%) | paper (accuracy %) |",
        "|---|---|---|---|---|---|---|---|",
        "| fixed_steps | 2 | 20 | 2.00 | 2.0 | 0.6000 ± 0.1414 | 91.00 ± 1.41 | 93.7 |",
        "| ba | 2 | 20 | 2.00 | 10.0 | **0.4000 ± 0.0000** | **96.00 ± 1.41** | 95.43 |"]
    metric, seeds, points = arm_curves(study, "fixed_steps")  # valid_accuracy 0.8 and 0.82 at updates 10 and 20
    assert (metric, seeds) == ("valid_accuracy", 2)
    assert points == [(s, t, pytest.approx(0.81), 0.8, pytest.approx(0.82)) for s, t in ((10, 1.0), (20, 2.0))]
    assert plot_study(study, arms, tmp_path / "curves.png") and (tmp_path / "curves.png").stat().st_size > 1000


def test_the_evaluated_checkpoints_update_is_a_column(tmp_path):
    """seqba.eval records the update of the checkpoint it read; the CSV shows it (it need not be the update of the
    best validation loss: translation keeps its best checkpoint by NLL), and leaves it out for older evaluations."""
    study = Study(out=str(tmp_path), recipe=str(RECIPES / "resnet44_cifar10_m40.yaml"), task="image_classification",
                  overrides=[], arms={"fixed_steps": ["ba.repeats=1"], "ba": []}, seeds=[1],
                  test_sets=[EvalSet("test")], updates_per_epoch={"fixed_steps": 10, "ba": 10})
    for arm in ("fixed_steps", "ba"):
        fake_run(study.run_dir(arm, 1), 64.0, 640.0, 0.9, 30.0, (0.5, 0.7))
    assert all("checkpoint_update" not in row for row in collect_rows(study, ["fixed_steps", "ba"]))
    (study.run_dir("ba", 1) / "eval.test.json").write_text(json.dumps({"update": 20, "accuracy": 0.9}))
    rows = collect_rows(study, ["fixed_steps", "ba"])
    assert [(r["best_valid_update"], r["checkpoint_update"]) for r in rows] == [(10, ""), (10, 20)]
    write_csv(rows, tmp_path / "results.csv")
    header, fixed, ba = (tmp_path / "results.csv").read_text().splitlines()
    assert header.split(",")[-3:] == ["final_valid_loss", "checkpoint_update", "test_accuracy"]  # no p: no outputs
    assert fixed.endswith(",0.7,,0.9") and ba.endswith(",0.7,20,0.9")


# -- end to end ----------------------------------------------------------------------------------------------------

def compare_command(*args):
    return [sys.executable, "-m", "seqba.compare", *map(str, args)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_a_changed_recipe_or_eval_args_is_refused_not_mixed(recipe, tmp_path, capsys):
    """A finished study rerun after its recipe file was edited (or with other --eval-args) must not skip runs
    trained under the old configuration as if they were of the new one."""
    out = tmp_path / "study"
    argv = [str(recipe), "--arms", "fixed_steps,ba", "--seeds", "1", "--out", str(out), "--eval-args=--beam=2",
            "train.max_updates=2", "train.validate_interval_updates=0"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # unchanged: everything skipped
    capsys.readouterr()
    assert cli.main([*argv[:-3], "--eval-args=--beam=3", *argv[-2:]]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out}: runs were evaluated with --eval-args '--beam=2', now "
                                              "'--beam=3'")
    recipe.write_text(recipe.read_text().replace("lr: 0.003", "lr: 0.01"))
    for extra in ([], ["--dry-run"], ["--report-only"]):
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out / 'runs' / 'fixed_steps' / 'seed_1'} was trained with optim.lr=0.003 "
                              "(now 0.01): the recipe or its overrides changed since"), err


def test_a_study_moved_with_its_recipe_reports_from_its_records_alone(recipe, tmp_path, capsys):
    """A study folder copied elsewhere without its weights (how docs/studies commits one), beside a copy of its
    recipe at another path, reports the same results.csv with --report-only; a recipe of another name is refused."""
    import shutil

    out = tmp_path / "study"
    overrides = ["train.max_updates=2", "train.validate_interval_updates=0"]
    argv = ["--arms", "fixed_steps,ba", "--seeds", "1", "--eval-args=--beam=2", *overrides]
    assert cli.main([str(recipe), "--out", str(out), *argv]) == 0
    moved = tmp_path / "elsewhere" / "study"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("*.pt", "checkpoints", ".lock"))
    assert not list(moved.rglob("*.pt"))
    other = tmp_path / "clone" / "recipes" / recipe.name
    other.parent.mkdir(parents=True)
    shutil.copy(recipe, other)
    capsys.readouterr()
    assert cli.main([str(other), "--out", str(moved), "--report-only", *argv]) == 0, capsys.readouterr().err
    assert (moved / "results.csv").read_text() == (out / "results.csv").read_text()
    renamed = other.with_name("other.yaml")
    shutil.copy(recipe, renamed)
    assert cli.main([str(renamed), "--out", str(moved), "--report-only", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"error: {moved} is a study of recipe ")


def test_resume_after_kill_mid_study(tmp_path):
    """SIGKILL the study while its second run trains (after a checkpoint): the rerun skips the finished run,
    the killed run resumes from its checkpoint, and the study completes."""
    out = tmp_path / "study"
    args = [RECIPES / "resnet44_cifar10_m40.yaml", "--arms", "fixed_steps,ba", "--seeds", "1", "--out", out,
            *TINY["image_classification"], "train.max_updates=60", "train.save_interval_updates=5",
            "train.log_interval=5", f"data.root={write_fake_cifar10(tmp_path / 'cifar')}"]
    proc = subprocess.Popen(compare_command(*args), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    checkpoints = out / "runs" / "ba" / "seed_1" / "checkpoints"
    deadline = time.time() + 300
    while not any(checkpoints.glob("step_*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    first = proc.communicate()[0]
    assert "[1/2] fixed_steps seed 1: done in" in first and "[2/2] ba seed 1: start" in first
    assert not (out / "runs" / "ba" / "seed_1" / "train.done").exists()
    rerun = subprocess.run(compare_command(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "[1/2] fixed_steps seed 1: done earlier, skipped" in rerun.stdout
    assert "resumed from" in (out / "runs" / "ba" / "seed_1" / "train.log").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["arm"], r["updates"]) for r in rows] == [("fixed_steps", "60"), ("ba", "60")]
    assert (out / "table.md").is_file() and (out / "curves.png").is_file()
    from seqba.compare.runs import this_machine  # each run records where it trained; the table says it
    assert [r["machine"] for r in rows] == [this_machine()] * 2
    assert f"- Machine: {this_machine()}." in (out / "table.md").read_text()


def test_local_launcher_jobs_schedule(monkeypatch, tmp_path):
    """--jobs 3 over 2 seeds x (fixed_steps, ba, equal_time): never more than 3 at once, every run once, and each
    equal_time starts only after its own seed's ba and fixed_steps have ended (a failed ba fails it with its own
    message instead of hanging)."""
    import threading

    from seqba.compare import launchers
    from seqba.compare.runs import RunFailed, RunSpec

    runs = [RunSpec(arm, seed, str(tmp_path / arm / str(seed)), [], pending=arm.startswith("equal_time"))
            for seed in (1, 2) for arm in ("fixed_steps", "ba", "equal_time")]
    lock, events, live = threading.Lock(), [], [0, 0]

    def fake_execute(spec):
        with lock:
            live[0] += 1
            live[1] = max(live[1], live[0])
            events.append(("start", spec.arm, spec.seed))
        time.sleep(0.05 if spec.arm != "ba" else 0.15)
        with lock:
            live[0] -= 1
            events.append(("end", spec.arm, spec.seed))
        if spec.arm == "ba" and spec.seed == 2:
            raise RunFailed("ba seed 2 broke")
        return {"wall_seconds": 0.1}

    def fake_resolve(study, spec):
        if spec.pending and ("end", "ba", spec.seed) in events and spec.seed == 2:
            raise ValueError("no ba measurement for seed 2")
        return spec

    monkeypatch.setattr(launchers, "execute_run", fake_execute)
    monkeypatch.setattr(launchers, "resolve_pending", fake_resolve)
    monkeypatch.setattr(launchers, "is_done", lambda spec: False)
    lines = []
    failures = launchers.run_local(None, runs, echo=lines.append, jobs=3)
    assert live[1] == 3
    assert sorted(e[1:] for e in events if e[0] == "start") == sorted((r.arm, r.seed) for r in runs
                                                                       if (r.arm, r.seed) != ("equal_time", 2))
    for seed in (1,):
        start = events.index(("start", "equal_time", seed))
        assert events.index(("end", "ba", seed)) < start and events.index(("end", "fixed_steps", seed)) < start
    assert failures == ["ba seed 2: ba seed 2 broke", "equal_time seed 2: no ba measurement for seed 2"]
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        launchers.run_local(None, runs, jobs=0)


def test_an_equal_time_arm_waits_for_the_arm_it_is_timed_from(monkeypatch, tmp_path):
    """--jobs 3: equal_time_ba_fork starts only once ba_fork (the slowest run) has ended, not when ba has."""
    import threading

    from seqba.compare import launchers
    from seqba.compare.runs import RunSpec

    runs = [RunSpec(arm, 1, str(tmp_path / arm), [], pending=arm.startswith("equal_time"))
            for arm in ("fixed_steps", "ba", "ba_fork", "equal_time_ba_fork")]
    lock, events = threading.Lock(), []

    def fake_execute(spec):
        with lock:
            events.append(("start", spec.arm))
        time.sleep(0.3 if spec.arm == "ba_fork" else 0.02)
        with lock:
            events.append(("end", spec.arm))
        return {"wall_seconds": 0.1}

    monkeypatch.setattr(launchers, "execute_run", fake_execute)
    monkeypatch.setattr(launchers, "resolve_pending", lambda study, spec: spec)
    monkeypatch.setattr(launchers, "is_done", lambda spec: False)
    assert launchers.run_local(None, runs, echo=lambda line: None, jobs=3) == []
    assert events.index(("end", "ba_fork")) < events.index(("start", "equal_time_ba_fork"))


def test_jobs_two_runs_a_study_with_equal_time(tmp_path):
    """The real CLI with --jobs 2: fixed_steps and ba of one seed side by side, then equal_time from their
    measured rates; the same results.csv rows a sequential study writes."""
    out = tmp_path / "study"
    args = [RECIPES / "resnet44_cifar10_m40.yaml", "--arms", "fixed_steps,ba,equal_time", "--seeds", "1", "--out",
            out, "--jobs", "2", *TINY["image_classification"], "train.max_updates=6", "train.log_interval=2",
            f"data.root={write_fake_cifar10(tmp_path / 'cifar')}"]
    proc = subprocess.run(compare_command(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 runs at a time" in proc.stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["arm"] for r in rows] == ["fixed_steps", "ba", "equal_time"]
    assert int(rows[2]["updates"]) >= 6
    assert cli.main([str(RECIPES / "resnet44_cifar10_m40.yaml"), "--out", str(tmp_path / "s2"), "--jobs", "0"]) == 2
    assert cli.main([str(RECIPES / "resnet44_cifar10_m40.yaml"), "--out", str(tmp_path / "s2"), "--baseline",
                     "ba_fork_top"]) == 2


def test_slurm_launcher_local_executor_with_significance(recipe, tmp_path):
    """--launcher slurm through submitit's local executor: same outputs, and BLEU p-values for translation."""
    pytest.importorskip("submitit")
    src, ref = tmp_path / "extra.en", tmp_path / "extra.de"
    src.write_text("a b c\nd e f\ng h\n")
    ref.write_text("a b c\nd e f\ng h\n")
    out = tmp_path / "study"
    args = [recipe, "--arms", "fixed_steps,ba", "--seeds", "1", "--out", out, "--test-set", f"extra={src},{ref}",
            "--launcher", "slurm", "--submitit-cluster", "local", "--slurm-params", "timeout_min=20",
            "--eval-args", "--beam 1", "train.validate_interval_updates=6"]
    proc = subprocess.run(compare_command(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted as job" in proc.stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["arm"] for r in rows] == ["fixed_steps", "ba"]
    assert rows[0]["test_bleu_p"] == "" and 0.0 <= float(rows[1]["test_bleu_p"]) <= 1.0
    assert 0.0 <= float(rows[1]["extra_bleu_p"]) <= 1.0
    table = (out / "table.md").read_text()
    assert "p vs fixed_steps (test, per seed)" in table and "p vs fixed_steps (extra, per seed)" in table
    again = subprocess.run(compare_command(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 2


def test_significance_against_another_baseline(tmp_path):
    """--baseline ba: every arm's hypotheses are paired with ba's of the same seed (sacreBLEU's bootstrap), ba gets
    none, and the table names ba; without a ba arm there are no p-values."""
    from seqba.compare.report import collect_rows, format_table
    from seqba.compare.significance import study_pvalues
    from seqba.tasks import TASKS

    refs = [f"the cat number {i} sat on the mat near door {i % 7}" for i in range(40)]
    ref_file = tmp_path / "ref.txt"
    ref_file.write_text("\n".join(refs) + "\n")
    study = Study(out=str(tmp_path / "study"), recipe="r.yaml", task="translation", overrides=[],
                  arms={"fixed_steps": [], "ba": [], "ba_fork_top": []}, seeds=[1],
                  test_sets=[EvalSet("extra", str(ref_file), str(ref_file))])
    hyps = {"fixed_steps": [f"a dog {i} sat" for i in range(40)], "ba": refs,
            "ba_fork_top": [r if i % 2 else "x" for i, r in enumerate(refs)]}
    for arm, lines in hyps.items():
        run = study.run_dir(arm, 1)
        run.mkdir(parents=True)
        (run / "hyp.extra.txt").write_text("\n".join(lines) + "\n")
    p = study_pvalues(study, list(hyps), baseline="ba")
    assert set(p) == {("extra", "fixed_steps", 1), ("extra", "ba_fork_top", 1)}
    assert p["extra", "ba_fork_top", 1] < 0.05 and p["extra", "fixed_steps", 1] < 0.05
    assert study_pvalues(study, ["fixed_steps", "ba_fork_top"], baseline="ba") == {}
    assert TASKS["translation"].significance.description.startswith("sacreBLEU paired bootstrap")
    rows = [{"arm": a, "seed": 1, "updates": 1, "epochs_seen": "", "train_seconds": 1.0, "extra_bleu": 1.0,
             "extra_bleu_p": round(p["extra", a, 1], 4) if a != "ba" else ""} for a in hyps]
    table = format_table(study, rows, list(hyps), "r", baseline="ba")
    assert "p vs ba (extra, per seed)" in table and "against ba of the same seed" in table
    assert "| ba | 1 | 1 |  | 1.0 | **1.00 ± –** | — |" in table
    rows += [{**rows[0], "seed": 2, "model_flops": 5.0}, {**rows[1], "seed": 2, "model_flops": 7.0},
             {**rows[1], "seed": 3, "model_flops": 9.0}]
    rows[1]["model_flops"] = 8.0
    lines = format_table(study, rows, list(hyps), "r", baseline="ba").splitlines()
    assert lines[0].startswith("| arm | n | updates | epochs seen | train s | model FLOPs |")
    assert [ln.split(" | ")[5] for ln in lines[2:5]] == ["", "8", ""]  # only an arm whose every run has them


def test_a_p_column_only_for_the_metric_that_has_p_values():
    """A test set with two metrics, only the first tested (the LM's perplexity and bits/word): one p column, after
    the tested metric, and every row has as many cells as the header."""
    study = Study(out="study", recipe="r.yaml", task="language_modeling", overrides=[],
                  arms={"fixed_steps": [], "ba": []}, seeds=[1], test_sets=[EvalSet("test")])
    rows = [{"arm": a, "seed": 1, "updates": 1, "epochs_seen": "", "train_seconds": 1.0, "test_ppl": ppl,
             "test_ppl_p": p, "test_bpw": bpw} for a, ppl, p, bpw in (("fixed_steps", 300.0, "", 8.2),
                                                                      ("ba", 290.0, 0.01, 8.1))]
    lines = format_table(study, rows, ["fixed_steps", "ba"], "r").splitlines()
    assert lines[0] == "| arm | n | updates | epochs seen | train s | test ppl | p vs fixed_steps (test, per seed) | test bpw |"
    assert all(line.count("|") == lines[0].count("|") for line in lines[1:4])
    assert lines[3] == "| ba | 1 | 1 |  | 1.0 | **290.00 ± –** | 0.010 | **8.1000 ± –** |"


def test_runs_on_different_machines_are_named_and_the_verdict_says_so():
    """A study whose runs trained on two machines lists which ran where under the table, and the equal-time verdict
    flags each seed whose equal-time run trained on another machine than the BA run it was timed from."""
    from seqba.compare.report import equal_time_verdict, machine_note

    study = Study(out="o", recipe="r.yaml", task="translation", overrides=[], arms={}, seeds=[1, 2],
                  test_sets=[EvalSet("test")])
    rows = [{"arm": arm, "seed": seed, "test_bleu": bleu, "train_seconds": 100.0, "machine": machine}
            for arm, seed, bleu, machine in (("ba", 1, 20.0, "AMD x2"), ("ba", 2, 20.0, "AMD x2"),
                                             ("equal_time", 1, 19.0, "Xeon x2"), ("equal_time", 2, 19.0, "AMD x2"))]
    arms = ["ba", "equal_time"]
    assert machine_note(rows, arms) == ("Machines (training seconds compare only within one): AMD x2: ba 1, ba 2, "
                                        "equal_time 2; Xeon x2: equal_time 1.")
    assert machine_note([{**r, "machine": "AMD x2"} for r in rows], arms) == "Machine: AMD x2."
    assert machine_note([{**r, "machine": ""} for r in rows], arms) == ""
    assert "not recorded: ba 1" in machine_note([{**rows[0], "machine": ""}, *rows[1:]], arms)
    verdict = equal_time_verdict(study, rows, arms)
    assert "Seed 1: `equal_time` trained on another machine than `ba`" in verdict
    assert "another machine" not in equal_time_verdict(study, [{**r, "machine": ""} for r in rows], arms)


def test_equal_time_verdict_is_made_from_the_numbers():
    """The verdict under the table: per BA arm, the paired difference to equal_time, wins, p-values, FLOPs and
    seconds ratios, and its label (pays / not settled / does not pay); nothing without an equal_time arm."""
    from seqba.compare.report import equal_time_verdict

    study = Study(out="o", recipe="r.yaml", task="translation", overrides=[], arms={}, seeds=[1, 2, 3],
                  test_sets=[EvalSet("test")])

    def row(arm, seed, bleu, flops, seconds):
        return {"arm": arm, "seed": seed, "test_bleu": bleu, "model_flops": flops, "train_seconds": seconds}

    rows = [row("equal_time", s, 18.0 + s, 1e12, 100.0) for s in (1, 2, 3)]
    rows += [row("ba", s, 19.5 + s, 4e12, 100.0) for s in (1, 2, 3)]                     # wins every seed
    rows += [row("ba_fork", s, 18.0 + s + d, 3e12, 80.0) for s, d in ((1, 1.0), (2, -0.5), (3, 0.2))]
    rows += [row("ba_symkl", s, 17.0 + s, 4e12, 110.0) for s in (1, 2, 3)]                # loses
    rows += [row("fixed_steps", s, 10.0, 1e12, 50.0) for s in (1, 2, 3)]                  # not a BA arm
    arms = ["fixed_steps", "ba", "ba_fork", "ba_symkl", "equal_time"]
    p = {("test", "ba", s): 0.01 for s in (1, 2, 3)}
    p.update({("test", a, s): 0.5 for a in ("ba_fork", "ba_symkl") for s in (1, 2, 3)})
    text = equal_time_verdict(study, rows, arms, p)
    lines = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert [ln.split("`")[1] for ln in lines] == ["ba", "ba_fork", "ba_symkl"]
    assert lines[0] == ("- `ba` vs `equal_time`, test bleu: +1.50 on the mean (per seed +1.50 / +1.50 / +1.50; "
                        "better for 3 of 3 seeds; p 0.010 / 0.010 / 0.010; 4.00x the model FLOPs, 1.00x the "
                        "training seconds): **pays** at equal time.")
    assert "better for 2 of 3 seeds" in lines[1] and "**not settled** at equal time. `equal_time` matched" in lines[1]
    assert "-1.00 on the mean" in lines[2] and lines[2].endswith("**does not pay** at equal time.")
    # a win on every seed whose paired test is not significant is not settled; no test: the seeds decide
    weak = {k: (0.2 if k[1] == "ba" else v) for k, v in p.items()}
    assert "`ba` vs" in equal_time_verdict(study, rows, arms, weak).splitlines()[2]
    assert "**not settled**" in equal_time_verdict(study, rows, arms, weak).splitlines()[2]
    assert "**pays**" in equal_time_verdict(study, rows, arms, None).splitlines()[2]
    assert equal_time_verdict(study, rows, ["fixed_steps", "ba"], p) == ""
    assert "not equal" not in lines[0] and "matched" not in lines[0]
    # ba_fork is cheaper than ba, whose wall-clock equal_time matched: said so, not blamed on the machine
    assert lines[1].endswith("`equal_time` matched `ba`'s wall-clock, not this arm's (0.80x its seconds): the "
                             "baseline had more time than this arm; `equal_time_ba_fork` would match it.")
    slow = [{**r, "train_seconds": 130.0} if r["arm"] == "ba" else r for r in rows]
    assert "The measured times were not equal (1.30x)" in equal_time_verdict(study, slow, arms, p).splitlines()[2]
    # a BA arm with its own equal-time arm is judged against it; the others against equal_time
    rows += [row("equal_time_ba_fork", s, 18.0 + s + 0.5, 3e12, 80.0) for s in (1, 2, 3)]
    own = equal_time_verdict(study, rows, [*arms, "equal_time_ba_fork"], p)
    lines = [ln for ln in own.splitlines() if ln.startswith("- ")]
    assert [ln.split("`")[1:4:2] for ln in lines] == [["ba", "equal_time"], ["ba_fork", "equal_time_ba_fork"],
                                                     ["ba_symkl", "equal_time"]]
    assert "-0.27 on the mean (per seed +0.50 / -1.00 / -0.30" in lines[1] and "1.00x the training seconds" in lines[1]
    assert "(`equal_time_X`: for arm X's; here `equal_time_ba_fork`)" in own.splitlines()[0]
    assert equal_time_verdict(study, rows, ["fixed_steps", "ba_fork", "equal_time_ba_fork"], p).count("- `") == 1


def test_model_flops_summed_from_the_records():
    """results.csv's model_flops: per window (updates x logged FLOPs per update), the unlogged tail at the last
    rate; None when any training record lacks the count."""
    from seqba.compare.records import summarise

    records = [{"step": 10, "tokens_per_step": 100.0, "tokens_per_s": 1000.0, "model_flops_per_step": 2.0},
               {"step": 20, "tokens_per_step": 100.0, "tokens_per_s": 1000.0, "model_flops_per_step": 3.0},
               {"step": 25, "valid_loss": 1.0}]
    assert summarise(records, "tokens").model_flops == 10 * 2.0 + 10 * 3.0 + 5 * 3.0
    del records[0]["model_flops_per_step"]
    assert summarise(records, "tokens").model_flops is None


def test_paired_bootstrap_identical_hypotheses_are_not_significant():
    """sacreBLEU's test gives 1/(n+1) for a system identical to the baseline; seqba reports 1.0 there, and the
    library's p-value otherwise (small for a system that matches every reference)."""
    from seqba.tasks.translation import paired_bootstrap

    refs = [f"the cat number {i} sat on the mat near door {i % 7}" for i in range(60)]
    base = [f"a dog {i} sat on a rug" for i in range(60)]
    p = paired_bootstrap(base, {"same": list(base), "perfect": list(refs)}, refs, n_samples=200)
    assert list(p) == ["same", "perfect"]
    assert p["same"] == 1.0 and p["perfect"] == pytest.approx(1 / 201)
    assert paired_bootstrap(base, {"same": list(base)}, refs) == {"same": 1.0}


def test_runs_sharing_the_machine_get_their_share_of_its_cores(monkeypatch, tmp_path):
    """--jobs 2 on 2 cores: each run and its evaluation get OMP_NUM_THREADS=1 (not torch's default of every core,
    which oversubscribed the machine); one job, or OMP_NUM_THREADS set by the user, leaves the environment alone."""
    import sys

    from seqba.compare import launchers, runs as runs_lib
    from seqba.compare.runs import RunSpec

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launchers.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert (launchers.threads_per_run(1), launchers.threads_per_run(2), launchers.threads_per_run(3)) == (None, 1, 1)
    monkeypatch.setattr(launchers.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert launchers.threads_per_run(4) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launchers.threads_per_run(4) is None
    monkeypatch.delenv("OMP_NUM_THREADS")

    seen = []
    monkeypatch.setattr(launchers, "execute_run", lambda spec: seen.append(spec.threads) or {"wall_seconds": 0.0})
    monkeypatch.setattr(launchers, "resolve_pending", lambda study, spec: spec)
    monkeypatch.setattr(launchers, "is_done", lambda spec: False)
    specs = [RunSpec(arm, 1, str(tmp_path / arm), []) for arm in ("fixed_steps", "ba")]
    assert launchers.run_local(None, specs, echo=lambda line: None, jobs=2) == [] and seen == [8, 8]

    log = tmp_path / "child.log"  # the child process sees the value
    runs_lib._run([sys.executable, "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"], log, 2)
    first, last = log.read_text().splitlines()
    assert first.startswith(f"$ OMP_NUM_THREADS=2 {sys.executable} -c ") and last == "threads 2"

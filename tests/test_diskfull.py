"""A full disk while saving, on a real small filesystem (a tmpfs of a few MB; issue 19 item 11).

``torch.save`` on a full disk raises ``RuntimeError: [enforce fail at inline_container.cc:...]`` rather than
``OSError``; seqba must still print one ``error:`` line, remove what it half-wrote and keep the checkpoint and model
files written before. Needs root (``mount -t tmpfs``); skipped with the reason otherwise.
"""
import json
import os
import shutil
import subprocess

import pytest
import torch

from seqba import checkpoint as checkpoint_lib
from seqba import train as train_cli

from runs import data_dir, recipe  # noqa: F401 (fixtures)

QUIET = ["train.validate_interval_updates=0", "train.log_interval=100"]


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs mounted at ``tmp_path / "fs"``, unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder, leave=0):
    """Write ``folder/filler`` until the filesystem has at most ``leave`` bytes free."""
    with open(folder / "filler", "wb") as f:
        chunk = b"\0" * 4096
        while True:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk)
                f.flush()
            except OSError:
                break


def leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name)


def test_model_file_on_a_full_disk_is_enospc_and_keeps_the_old_file(small_fs):
    path = small_fs / "checkpoint_last.pt"
    checkpoint_lib.save_model_file(path, {"w": torch.ones(3)}, {"task": "translation"}, {"step": 1})
    before = path.read_bytes()
    fill(small_fs)
    with pytest.raises(OSError) as info:
        checkpoint_lib.save_model_file(path, {"w": torch.zeros(200_000)}, {"task": "translation"}, {"step": 2})
    assert info.value.errno == 28 and info.value.filename == str(path)
    assert path.read_bytes() == before
    assert leftovers(small_fs) == []


def test_training_on_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(recipe, small_fs, capsys):
    run = small_fs / "run"
    args = [str(recipe), f"output_dir={run}", "train.save_interval_updates=2", *QUIET]
    assert train_cli.main([*args, "train.max_updates=2"]) == 0
    capsys.readouterr()
    saved = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert saved == ["step_0000002"]
    last = (run / "checkpoint_last.pt").read_bytes()
    fill(small_fs, leave=48 * 1024)  # room for the log lines and the lock, not for a checkpoint
    assert train_cli.main([*args, "train.max_updates=4", "train.resume=auto"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: no space left on device while writing ("), err
    assert str(run) in err[0]
    assert leftovers(run) == []
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000002"]
    assert checkpoint_lib.latest_checkpoint(run) == run / "checkpoints" / "step_0000002"
    assert json.loads((run / "checkpoints" / "step_0000002" / "complete.json").read_text())["step"] == 2
    assert (run / "checkpoint_last.pt").read_bytes() == last
    _, _, meta = checkpoint_lib.load_model_file(run / "checkpoint_last.pt")
    assert meta["step"] == 2
    (small_fs / "filler").unlink()  # space again: the run resumes from update 2 and finishes
    assert train_cli.main([*args, "train.max_updates=4", "train.resume=auto"]) == 0
    assert checkpoint_lib.latest_checkpoint(run).name == "step_0000004"

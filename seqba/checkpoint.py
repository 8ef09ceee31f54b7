"""Checkpoints and model files: atomic writes, exact resume, recovery after a crash at any moment.

Two formats live here:

* the **resume checkpoint** under ``output_dir/checkpoints`` (Accelerate state + seqba's loop/task/RNG state)::

    step_0000120/           one checkpoint (written as .tmp_step_0000120, then renamed: never half-written)
        pytorch_model.bin, optimizer.bin, ...  (``accelerator.save_state``; torch files, so that tied
                            embeddings stay one tensor: safetensors would drop the tie with a warning)
        trainer_state_<rank>.pt   loop position, task state, this rank's RNG states (tensors and plain Python)
        config.yaml
        complete.json       written last, after every rank's files: the folder is complete
    latest                  text file naming the newest complete checkpoint (replaced atomically)
    nonfinite_step_*/       a checkpoint whose weights produced a NaN/inf loss, moved aside (never resumed)

* the **model file** ``checkpoint_{best,last}.pt``: ``{"config": dict, "model": state_dict, **extra}`` written by
  :func:`save_model_file`, read by :func:`load_model_file` (what ``seqba.eval`` and ``seqba.analyze`` load).

All ``torch.load`` calls use ``weights_only=True``; RNG states are stored as tensors and lists so that they load
that way. A crash or SIGKILL at any moment leaves a complete checkpoint to resume from: :func:`latest_checkpoint`
repairs an interrupted replace (the ``.tmp_``/``.old_`` folders of a step) and falls back, with a warning, to the
newest complete checkpoint when ``latest`` names a missing or incomplete one. Nothing here deletes a complete
checkpoint except :func:`prune_checkpoints`, which never touches the ones it is told to protect.

A write that fails (a full disk: ``torch.save`` then raises ``RuntimeError: [enforce fail at
inline_container.cc]``, not ``OSError``) removes what it half-wrote and raises ``OSError`` (``ENOSPC`` when the
filesystem is full) naming the file; the complete checkpoints and model files written before stay as they were.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from seqba import config as config_lib
from seqba.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "prune_checkpoints", "set_aside",
           "point_latest", "save_model_file", "load_model_file", "rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)

LATEST = "latest"
COMPLETE = "complete.json"


def rng_state() -> dict[str, Any]:
    """This process's Python, numpy, torch (and CUDA) RNG states, as tensors and plain lists."""
    np_state = np.random.get_state()
    state = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: a failed write with less free space than this on its filesystem is reported as a full disk
LOW_SPACE_BYTES = 2**20


def _disk_full(folder: Path) -> bool:
    """Whether the filesystem holding ``folder`` has (almost) no space left: the likely cause of a failed write.

    Called before the half-written files are removed, while they still fill the disk.
    """
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES


def _as_os_error(err: BaseException, path: Path, full: bool) -> OSError:
    """``err`` raised while writing ``path`` as an ``OSError`` naming ``path``: ``ENOSPC`` when its errno says so,
    or when it has none (``torch.save`` reports a failed write as ``RuntimeError: [enforce fail at
    inline_container.cc:...]``, safetensors as ``SafetensorError``) and the disk was ``full``."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and full):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if isinstance(err, OSError) and code is not None:
        return OSError(code, err.strerror or os.strerror(code), str(path))
    return OSError(errno.EIO, f"cannot write ({type(err).__name__}: {_first_line(err)})", str(path))


def _is_write_error(err: BaseException) -> bool:
    """An error that a failed file write raises: ``OSError``, or torch's / safetensors' wrappers of one."""
    if isinstance(err, OSError):
        return True
    text = str(err)
    return (isinstance(err, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text
                                               or "file write failed" in text or "iostream error" in text)) \
        or type(err).__name__ == "SafetensorError"


@contextlib.contextmanager
def _writing(path: Path, *cleanup: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` into an ``OSError`` (see :func:`_as_os_error`) after removing the
    half-written files and folders ``cleanup`` (never anything complete)."""
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - re-raised below, unchanged unless it is a write error
        full = _is_write_error(err) and _disk_full(path.parent)
        for leftover in cleanup:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()
        if not _is_write_error(err):
            raise
        raise _as_os_error(err, path, full) from None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with _writing(path, tmp):
        tmp.write_text(text)
    os.replace(tmp, path)


def _complete(path: Path) -> bool:
    """A checkpoint folder is complete once its marker is written (older ones: rank 0's trainer state)."""
    if (path / COMPLETE).is_file():
        return True
    return path.is_dir() and (path / "trainer_state_0.pt").is_file() and not any(path.glob("*.tmp*"))


def _step_folders(root: Path) -> list[Path]:
    """``step_<digits>`` folders under ``root``, oldest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[len("step_"):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len("step_"):]))


def _repair(root: Path) -> None:
    """Finish a replace of a step folder that a crash interrupted (main process only).

    ``save_checkpoint`` replaces ``step_N`` as: ``step_N -> .old_step_N``, ``.tmp_step_N -> step_N``. If
    ``step_N`` is missing, the complete ``.tmp_`` (newer) or else ``.old_`` folder becomes ``step_N``.
    """
    for staged in sorted(root.glob(".tmp_step_*")) + sorted(root.glob(".old_step_*")):
        if not staged.name[len(".tmp_step_"):].isdigit():
            continue
        final = root / staged.name.split("_", 1)[1]
        if not final.exists() and _complete(staged):
            logger.warning("restoring %s from %s (a checkpoint replace was interrupted)", final.name, staged.name)
            os.replace(staged, final)


def latest_checkpoint(output_dir: str | Path, repair: bool = True) -> Path | None:
    """The checkpoint to resume from under ``output_dir/checkpoints``, or ``None`` when there is none.

    ``latest`` names it; when that folder is missing or incomplete, the newest complete ``step_*`` folder is used
    with a warning. ``repair`` first finishes an interrupted replace (see :func:`_repair`; main process only).

    Raises:
        CheckpointError: ``step_*`` folders exist but none is complete (rather than silently training from
            update 0 over them).
    """
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    if repair:
        _repair(root)
    pointer = root / LATEST
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None and _complete(named):
        return named
    steps = _step_folders(root)
    complete = [p for p in steps if _complete(p)]
    if named is not None or complete:
        logger.warning("%s names %s, which is %s; resuming from the newest complete checkpoint %s", pointer,
                       named.name if named else None, "incomplete" if named and named.exists() else "missing",
                       complete[-1].name if complete else None)
    if complete:
        return complete[-1]
    if steps:
        raise CheckpointError(f"{root} holds {len(steps)} checkpoint folder(s) but none is complete; refusing to "
                              "train from update 0 over them. Move the folder away, or set another output_dir")
    return None


def prune_checkpoints(root: Path, keep: int, protect: set[str] = frozenset()) -> None:
    """Delete all but the newest ``keep`` ``step_*`` folders, never those named in ``protect`` (main process).

    ``keep <= 0`` keeps everything. The folder ``latest`` names is always protected.
    """
    if keep <= 0:
        return
    pointer = root / LATEST
    protect = set(protect) | ({pointer.read_text().strip()} if pointer.is_file() else set())
    steps = _step_folders(root)
    for path in steps[: max(len(steps) - keep, 0)]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


def point_latest(root: Path, name: str) -> None:
    """Make ``root/latest`` name the checkpoint folder ``name`` (atomically)."""
    _write_text_atomic(root / LATEST, name + "\n")


def set_aside(path: Path, reason: str = "nonfinite") -> Path:
    """Rename checkpoint folder ``path`` to ``<reason>_<name>`` (kept for inspection, never resumed from)."""
    target = path.with_name(f"{reason}_{path.name}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    return target


def save_checkpoint(accelerator, output_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    config: dict | None = None, keep: int = 1, protect: set[str] = frozenset()) -> Path:
    """Save a complete checkpoint of all ranks at ``step`` atomically; keep the newest ``keep`` ones.

    Every rank must call it (collective). ``trainer_state`` is this rank's loop and task state. Pruning never
    deletes the checkpoint just written (whatever its step) nor the folders named in ``protect``.

    Raises:
        OSError: a write failed (``ENOSPC`` for a full disk), naming the file; the half-written ``.tmp_`` folder
            is removed and the checkpoints written before are untouched.
    """
    root = Path(output_dir) / "checkpoints"
    name = f"step_{step:07d}"
    final, tmp = root / name, root / f".tmp_{name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    with _writing(final, tmp):
        # torch files, not safetensors: safetensors drops one of two tied tensors with a warning at every save
        accelerator.save_state(str(tmp), safe_serialization=False)
        torch.save({**trainer_state, "rng": rng_state()}, tmp / f"trainer_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with _writing(final, tmp):
            if config is not None:
                (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            (tmp / COMPLETE).write_text(json.dumps({"step": step, "num_processes": accelerator.num_processes})
                                        + "\n")
        stale = root / f".old_{name}"
        if final.exists():  # the same step saved again (e.g. at an epoch end): keep it until the new one is in place
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
        os.replace(tmp, final)
        point_latest(root, name)
        shutil.rmtree(stale, ignore_errors=True)
        prune_checkpoints(root, keep, set(protect) | {name})
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict[str, Any]:
    """Load model/optimizer/scheduler state into the prepared objects and return this rank's trainer state.

    The RNG states are restored as well. Raises ``FileNotFoundError`` naming the missing file.
    """
    path = Path(path)
    state_file = path / f"trainer_state_{accelerator.process_index}.pt"
    if not state_file.is_file():
        raise CheckpointError(f"{state_file} is missing: was the checkpoint written with this many processes?")
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})  # optimizer etc. (model: safetensors)
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, KeyError, IndexError, EOFError, OSError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        raise CheckpointError(f"cannot resume from {path}: {type(err).__name__}: {_first_line(err)} (a checkpoint "
                              "of another model, task or process count?)") from None
    set_rng_state(state.pop("rng"))
    return state


def _first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of ``err``'s message, without terminal colour codes, at most ``limit`` characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return (text[0] if text else "")[:limit]


def save_model_file(path: str | Path, model_state: dict[str, torch.Tensor], config: dict,
                    extra: dict | None = None) -> None:
    """Write ``{"config": config, "model": model_state, **extra}`` to ``path`` atomically (temp file + rename).

    ``config`` is the plain-dict config (``seqba.config.to_dict``); ``extra`` holds plain values (``step``, the
    best metric).

    Raises:
        OSError: the write failed (``ENOSPC`` for a full disk), naming ``path``; the temp file is removed and an
            existing ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with _writing(path, tmp):
        torch.save({"config": config, "model": model_state, **(extra or {})}, tmp)
    os.replace(tmp, path)


def load_model_file(path: str | Path) -> tuple[Any, dict, dict]:
    """Load a model file (``checkpoint_best.pt`` / ``checkpoint_last.pt``, or a run folder: its best file).

    Returns:
        ``(config, model_state, extra)``: the typed :class:`seqba.config.Config`, the state dict, and the other
        keys (``step``, the best metric), loaded with ``weights_only=True``.

    Raises:
        CheckpointError: a missing file, or one that is empty, truncated, not a torch file, or not a seqba model
            file (each named).
        seqba.errors.ConfigError: the stored config does not fit this version's schema.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint_best.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the weights-only unpickler raises KeyError, IndexError, ... on junk
        size = path.stat().st_size
        raise CheckpointError(f"{path} ({size} bytes) is not a readable checkpoint ({type(err).__name__}: "
                              f"{_first_line(err)}); empty, truncated or another kind of file?") from None
    if (not isinstance(blob, dict) or not isinstance(blob.get("config"), dict)
            or not isinstance(blob.get("model"), dict)):
        raise CheckpointError(f"{path} is not a seqba model file (expected a dict with a 'config' dict and a "
                              "'model' state dict)")
    cfg = config_lib.build(config_lib.upgrade(blob["config"]), str(path))
    extra = {k: v for k, v in blob.items() if k not in ("config", "model")}
    return cfg, blob["model"], extra

"""Atomic, resumable checkpoints: Accelerate state + seqba's loop/task/RNG state.

Layout of ``output_dir/checkpoints``::

    step_000120/            one checkpoint (written as .tmp_step_000120, then renamed: never half-written)
        model.safetensors, optimizer.bin, ...  (``accelerator.save_state``)
        trainer_state_<rank>.pt   loop position, task state, this rank's RNG states (tensors and plain Python)
        config.yaml
    latest                  text file naming the newest complete checkpoint (replaced atomically)

All ``torch.load`` calls use ``weights_only=True``; RNG states are stored as tensors and lists so that they load
that way. A crash or SIGKILL at any moment leaves ``latest`` pointing at a complete checkpoint.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state"]

LATEST = "latest"


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


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _complete(path: Path) -> bool:
    return (path / "trainer_state_0.pt").is_file()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names under ``output_dir/checkpoints`` (else the newest complete one), or ``None``."""
    root = Path(output_dir) / "checkpoints"
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if _complete(path):
            return path
    complete = sorted(p for p in root.glob("step_*") if p.is_dir() and _complete(p))
    return complete[-1] if complete else None


def save_checkpoint(accelerator, output_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    config: dict | None = None, keep: int = 1) -> Path:
    """Save a complete checkpoint of all ranks at ``step`` atomically; keep the newest ``keep`` ones.

    Every rank must call it (collective). ``trainer_state`` is this rank's loop and task state.
    """
    root = Path(output_dir) / "checkpoints"
    name = f"step_{step:07d}"
    final, tmp = root / name, root / f".tmp_{name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save({**trainer_state, "rng": rng_state()}, tmp / f"trainer_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if config is not None:
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        stale = root / f".old_{name}"
        if final.exists():  # the same step saved again (e.g. at an epoch end): keep it until the new one is in place
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
        os.replace(tmp, final)
        _write_text_atomic(root / LATEST, name + "\n")
        shutil.rmtree(stale, ignore_errors=True)
        if keep > 0:  # never the one just written, whatever its step (a run resumed from an older checkpoint)
            others = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name != name)
            for path in others[: max(len(others) - (keep - 1), 0)]:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict[str, Any]:
    """Load model/optimizer/scheduler state into the prepared objects and return this rank's trainer state.

    The RNG states are restored as well. Raises ``FileNotFoundError`` naming the missing file.
    """
    path = Path(path)
    state_file = path / f"trainer_state_{accelerator.process_index}.pt"
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} is missing: was the checkpoint written with this many processes?")
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})  # optimizer etc. (model: safetensors)
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    set_rng_state(state.pop("rng"))
    return state

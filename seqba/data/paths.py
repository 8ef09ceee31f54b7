"""Where the real corpora live: ``$SEQBA_DATA`` or ``../shared/data`` beside the project root."""
from __future__ import annotations

import os
from pathlib import Path

from seqba.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path | None:
    """Return the folder of shared corpora, or ``None`` when it is absent.

    ``$SEQBA_DATA`` when set (and not empty), else ``../shared/data`` beside the project root (the layout CI
    uses). Corpora are read in place, never copied into the project.

    Raises:
        ConfigError: ``SEQBA_DATA`` is set but names no folder (a typo must not silently read other corpora).
    """
    env = os.environ.get("SEQBA_DATA")
    if env:
        path = Path(env)
        if not path.is_dir():
            what = "a file, not a folder" if path.exists() else "no such folder"
            raise ConfigError(f"SEQBA_DATA={env}: {what} (it names the folder of the shared corpora; unset it to "
                              f"use {PROJECT_ROOT.parent / 'shared' / 'data'})")
        return path
    shared = PROJECT_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None

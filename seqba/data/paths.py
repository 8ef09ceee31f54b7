"""Where the real corpora live: ``$SEQBA_DATA`` or ``../shared/data`` beside the project root."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path | None:
    """Return the folder of shared corpora, or ``None`` when it is absent.

    Looks at the ``SEQBA_DATA`` environment variable first, then ``../shared/data`` beside the project
    root (the layout CI uses). Corpora are read in place, never copied into the project.
    """
    env = os.environ.get("SEQBA_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(PROJECT_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None

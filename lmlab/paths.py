"""Folders lmlab reads from and writes to."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LMLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmlab``, else ``~/.cache/lmlab`` (created)."""
    env = os.environ.get("LMLAB_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "lmlab"
    path.mkdir(parents=True, exist_ok=True)
    return path

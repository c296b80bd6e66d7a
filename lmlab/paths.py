"""Folders lmlab reads from and writes to, and the one way it writes a file: atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` all or nothing: yields a temporary file in the same folder, renamed onto
    ``path`` (``os.replace``, atomic) when the block ends normally and removed when it raises.
    A crash or an interrupt mid-write never leaves a truncated file under the final name, nor a
    temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

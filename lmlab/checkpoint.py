"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes), so
loading it cannot run code. Files are named ``step_<N>.pt``; ``best.pt`` holds the best model by
validation loss when asked for.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch


def checkpoint_name(step: int) -> str:
    return f"step_{step}.pt"


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename: a crash mid-write never
    leaves a truncated checkpoint under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``step_<N>.pt`` with the largest N in ``folder``, or None."""
    paths = _steps_newest_first(Path(folder))
    return paths[0] if paths else None


def _steps_newest_first(folder: Path) -> list[Path]:
    found = []
    for p in folder.glob("step_*.pt"):
        try:
            found.append((int(p.stem.split("_", 1)[1]), p))
        except ValueError:
            continue
    return [p for _, p in sorted(found, reverse=True)]


def newest_good_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``step_<N>.pt`` with the largest N in ``folder`` that loads and holds a model, optimizer
    and step, or None. A damaged file (truncated, not a checkpoint) is skipped with a warning
    naming it, and the next older one is tried."""
    for path in _steps_newest_first(Path(folder)):
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
                raise ValueError("it is not an lmlab training checkpoint")
        except Exception as err:  # noqa: BLE001 - any failure to read means "not good"
            warnings.warn(f"skipping {path}: it cannot be resumed from ({err}).", stacklevel=2)
            continue
        return path
    return None


def load_model(path: str | os.PathLike, map_location="cpu"):
    """Rebuild the :class:`lmlab.Transformer` and the tokenizer stored in a checkpoint."""
    from .config import ModelConfig
    from .data import CharTokenizer
    from .model import Transformer

    state = load_checkpoint(path, map_location)
    model = Transformer(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    stored = state.get("tokenizer")
    tokenizer = CharTokenizer.from_state_dict(stored) if stored else None
    return model, tokenizer

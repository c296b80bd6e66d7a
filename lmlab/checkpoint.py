"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes), so
loading it cannot run code. Files are named ``step_<N>.pt``; ``best.pt`` holds the best model by
validation loss when asked for.
"""

from __future__ import annotations

import os
import tempfile
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
    folder = Path(folder)
    found = []
    for p in folder.glob("step_*.pt"):
        try:
            found.append((int(p.stem.split("_", 1)[1]), p))
        except ValueError:
            continue
    return max(found)[1] if found else None


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

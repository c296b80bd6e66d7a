"""Checkpoints: written atomically, loaded with ``weights_only=True``, checked when read.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes), so
loading it cannot run code. Files are named ``step_<N>.pt``; ``best.pt`` holds the best model by
validation loss when asked for. A file that does not load (truncated by a full disk, cut by a
crash of another program, not a checkpoint at all) raises :class:`CheckpointDamaged` naming it;
:func:`latest_checkpoint` skips such files, with a warning, and returns the newest one that loads.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .data import CharTokenizer
from .model import Transformer
from .paths import atomic_write

RNG_KEY = "rng"
"""Payload key of the random-number states: they always load onto the CPU (see load_checkpoint)."""


class CheckpointDamaged(ValueError):
    """A checkpoint file exists but cannot be read back."""


def checkpoint_name(step: int) -> str:
    return f"step_{step}.pt"


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """torch.save through :func:`lmlab.paths.atomic_write`: a crash mid-write never leaves a
    truncated checkpoint under the final name."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def _to(obj, device):
    """Every tensor inside ``obj`` (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The payload saved at ``path``, tensors on ``map_location`` except the random-number
    states under ``"rng"``, which stay on the CPU: ``torch.set_rng_state`` and
    ``Generator.set_state`` accept only CPU byte tensors, whatever device the model lives on.

    Raises ``FileNotFoundError`` when there is no file and :class:`CheckpointDamaged` (naming
    the file) when it does not load as an lmlab checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, KeyError, IndexError, UnicodeDecodeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if isinstance(err, pickle.UnpicklingError):  # torch's text is about weights_only, which
            first_line = "not a readable torch.save payload"  # is not the problem here
        raise CheckpointDamaged(
            f"checkpoint {path} is damaged and cannot be loaded ({type(err).__name__}: "
            f"{first_line[:160]}). It may be truncated (a full disk, a crash while another "
            "program wrote it) or not an lmlab checkpoint. Delete it and use an earlier "
            "step_<N>.pt from the same folder (lmlab.checkpoint.latest_checkpoint finds the "
            "newest one that loads).") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointDamaged(f"checkpoint {path} is damaged: it loads, but holds no model "
                                f"weights (it is a {type(state).__name__}, not an lmlab payload).")
    device = torch.device(map_location) if map_location is not None else torch.device("cpu")
    if device.type != "cpu":
        state = {k: (v if k == RNG_KEY else _to(v, device)) for k, v in state.items()}
    return state


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``step_<N>.pt`` with the largest N in ``folder`` that loads, or None. A newer file that
    is damaged is skipped with a warning naming it."""
    folder = Path(folder)
    found = []
    for p in folder.glob("step_*.pt"):
        try:
            found.append((int(p.stem.split("_", 1)[1]), p))
        except ValueError:
            continue
    for _, path in sorted(found, reverse=True):
        try:
            load_checkpoint(path)
        except CheckpointDamaged as err:
            warnings.warn(f"skipping {path}: {err}", RuntimeWarning, stacklevel=2)
            continue
        return path
    return None


def restore_best(model: nn.Module, best_path: str | os.PathLike) -> dict:
    """Load the weights of ``best.pt`` (written by ``lmlab.train`` with ``keep_best=True``) into
    ``model``; returns the record saved with them, ``{"val_loss": ..., "step": ...}``."""
    state = load_checkpoint(best_path)
    model.load_state_dict(state["model"])
    return dict(state["best"])


def load_model(path: str | os.PathLike, map_location="cpu"):
    """Rebuild the :class:`lmlab.Transformer` and the tokenizer stored in a checkpoint."""
    state = load_checkpoint(path, map_location)
    model = Transformer(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    stored = state.get("tokenizer")
    tokenizer = CharTokenizer.from_state_dict(stored) if stored else None
    return model, tokenizer

"""Where and how computation runs: device, autocast dtype, seeding, and the size profile."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

PROFILES = ("ci", "cpu", "gpu")


def profile() -> str:
    """The size profile notebooks use: ``ci`` | ``cpu`` | ``gpu``.

    Read from ``LMLAB_PROFILE``; when unset, ``gpu`` if CUDA is available, else ``cpu``.
    """
    value = os.environ.get("LMLAB_PROFILE", "").strip().lower()
    if value:
        if value not in PROFILES:
            raise ValueError(
                f"LMLAB_PROFILE={value!r} is invalid: expected one of {', '.join(PROFILES)} "
                "(ci: seconds, for tests; cpu: minutes on a laptop; gpu: nanoGPT scale)."
            )
        return value
    return "gpu" if torch.cuda.is_available() else "cpu"


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; anything else is taken as given (and checked)."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={preference!r} was asked for but CUDA is not available; use 'auto'.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device={preference!r} was asked for but MPS is not available; use 'auto'.")
    return device


def autocast_dtype(device: torch.device, preference: str = "auto") -> torch.dtype | None:
    """The dtype to autocast matmuls to, or ``None`` for plain fp32.

    ``auto``: bf16 on CUDA devices that support it, fp32 elsewhere (CPU autocast to bf16 is slower
    than fp32 on most laptop CPUs, so it is only used when asked for).
    """
    if preference == "float32":
        return None
    if preference == "bfloat16":
        return torch.bfloat16
    if preference == "float16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices): same seed, same machine, same result."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

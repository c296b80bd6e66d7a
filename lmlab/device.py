"""Where and how computation runs: device, autocast dtype, seeding, the size profile, and the
few device-specific calls (synchronize, allocator memory, compile) that timing code needs."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import warnings
from collections.abc import Hashable

import numpy as np
import torch
from torch import nn

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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA compute capability >= 8.0 (Ampere and
    later; ROCm asks torch). ``torch.cuda.is_bf16_supported()`` also counts emulated bf16 (a T4 or
    V100 runs it, slowly and without flash attention), so it is not used here."""
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def autocast_dtype(device: torch.device, preference: str = "auto") -> torch.dtype | None:
    """The dtype to autocast matmuls to, or ``None`` for plain fp32.

    ``auto``: bf16 on CUDA devices with native bf16 (:func:`native_bf16`), fp16 on older CUDA
    devices (the training loop then scales the loss with a ``GradScaler``), fp32 elsewhere (CPU
    autocast to bf16 is slower than fp32 on most laptop CPUs, and MPS runs fp32 unless asked).
    """
    if preference == "float32":
        return None
    if preference == "bfloat16":
        return torch.bfloat16
    if preference == "float16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return None


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """The context the forward passes run in: ``torch.autocast`` to ``amp_dtype`` on
    ``device``, or nothing when ``amp_dtype`` is None (plain fp32). One per forward pass."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished the work queued on it (CUDA and MPS run asynchronously:
    a timer read without this measures the launch, not the work). A no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def allocator_bytes(device: torch.device | str) -> int | None:
    """Bytes the device's own allocator holds for tensors now: ``torch.cuda.memory_allocated`` on
    CUDA, ``torch.mps.driver_allocated_memory`` on MPS (it includes the blocks the MPS caching
    allocator keeps after a free, so its growth from an emptied cache bounds a call's peak);
    ``None`` on CPU, whose allocations are read with ``torch.profiler`` instead."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return torch.mps.driver_allocated_memory()
    return None


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a peak-memory measurement: reset CUDA's peak counter, empty MPS's cache (so that what
    the cache grows to is this call's peak); nothing on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "mps":
        torch.mps.empty_cache()


def peak_allocator_bytes(device: torch.device | str) -> int | None:
    """The peak since :func:`reset_peak_memory`: ``torch.cuda.max_memory_allocated`` on CUDA,
    what the emptied MPS cache grew to on MPS, ``None`` on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return allocator_bytes(device)


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where a random call must put its result to use ``generator``: its own device (torch
    rejects a CUDA generator for a CPU draw and the other way round); the CPU when ``None``."""
    return torch.device("cpu") if generator is None else generator.device


class CompileFallbackWarning(UserWarning):
    """``compile=True`` was asked for, but (part of) the model runs uncompiled."""


class _DynamoLimitWarner(logging.Handler):
    """Turns dynamo's "hit config.recompile_limit" log line (after which the function runs
    uncompiled, easy to miss in a notebook) into a :class:`CompileFallbackWarning`."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("torch._dynamo hit config."):
            warnings.warn("torch.compile fell back to eager execution: "
                          + message.splitlines()[0].removeprefix("torch._dynamo ")
                          + ". Too many shapes were compiled in this process; call "
                          "torch._dynamo.reset() or keep shapes fixed.", CompileFallbackWarning,
                          stacklevel=2)


_DYNAMO_LOGGER = "torch._dynamo.convert_frame"
_compiled_signature: list[Hashable] = []  # the shape signature of the graphs dynamo now caches


def compile_model(model: nn.Module, enabled: bool = True, signature: Hashable = None,
                  **compile_kwargs) -> nn.Module:
    """``torch.compile(model)`` when ``enabled``, else ``model`` itself.

    Dynamo caches compiled graphs per code object for the whole process and recompiles for each
    new shape; past ``torch._dynamo.config.recompile_limit`` a function silently runs eagerly.
    So when ``signature`` (anything that fixes the shapes: model config, batch size, objective)
    differs from the previous compiled run's, the cache is reset first (``torch._dynamo.reset()``):
    a sweep over shapes recompiles each once instead of piling graphs up, and runs of one shape
    reuse theirs. A fallback to eager (the limit hit, or torch.compile unavailable here) gives a
    :class:`CompileFallbackWarning`. ``compile_kwargs`` go to ``torch.compile``.
    """
    if not enabled:
        return model
    if _compiled_signature != [signature]:
        torch._dynamo.reset()
        _compiled_signature[:] = [signature]
    logger = logging.getLogger(_DYNAMO_LOGGER)
    if not any(isinstance(h, _DynamoLimitWarner) for h in logger.handlers):
        logger.addHandler(_DynamoLimitWarner())
    try:
        return torch.compile(model, **compile_kwargs)
    except RuntimeError as error:  # e.g. a Python version this torch's dynamo does not support
        warnings.warn(f"torch.compile is not available here ({error}); training runs uncompiled.",
                      CompileFallbackWarning, stacklevel=2)
        return model


SEED_OFFSETS = {"objective": 1, "val_batches": 2, "train_batches": 3, "eval_objective": 4,
                "replay_batches": 1, "policy_report": 1000}
"""What a run draws from ``seed + offset`` besides its batches (``seed`` itself): the objective's
randomness during training (MLM masks, pairs), the fixed validation and training batches it scores,
and the objective's randomness while scoring them (reseeded at every evaluation, so one model
always gets one score); in :func:`lmlab.finetune.adapt`, the replayed pretraining windows (its
minibatches of the speaker's pieces come from ``seed``); in :func:`lmlab.rl.letter_free_run`, the
samples its before / after report scores (so they are no training batch). Named once here; the
training loop, the range test, DDP's resume, fine-tuning and the policy-gradient runs use them."""

RANK_SEED_STRIDE = 1_000_003
"""In a data-parallel run, rank r seeds its objective randomness with seed + r * RANK_SEED_STRIDE
(a prime, far from the small offsets above): :mod:`lmlab.distributed`."""

RESUME_SEED_STRIDE = 7919
"""A data-parallel run resumed at ``step``: ranks > 0 reseed their dropout with
``base = seed + r * RANK_SEED_STRIDE + RESUME_SEED_STRIDE * step`` and their objective randomness
with ``base + SEED_OFFSETS["objective"]`` (a checkpoint holds rank 0's generators only)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices): same seed, same machine, same result."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

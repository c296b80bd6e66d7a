"""What attention costs as the sequence grows: time and memory, naive against fused (SDPA).

The naive implementation materializes the score matrix S = Q K^T / sqrt(d_k) and its softmax,
each a (B, H, T, T) tensor of

    score_bytes = B * H * T^2 * bytes_per_element

while a fused kernel (``torch.nn.functional.scaled_dot_product_attention``: FlashAttention on
GPUs, a blocked kernel on CPUs) works through the keys in tiles and keeps only O(B H T d_k).
Both still do O(B H T^2 d_k) arithmetic: the fused kernel saves memory traffic, not FLOPs.

What is *measured* here: wall-clock time (median of repeats, the device synchronized before each
clock read) and memory, read from the device's own allocator: on CUDA the peak allocated during
the call above what was allocated before (``torch.cuda.max_memory_allocated``), on MPS what the
emptied caching allocator grew to during the call (``torch.mps.driver_allocated_memory``), both
as ``peak_bytes``; on CPU the total and the largest allocation recorded by ``torch.profiler`` with
``profile_memory=True`` during the call. ``score_bytes`` is *computed* from the formula above.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from .attention import causal_mask, fused_attention, scaled_dot_product_attention
from .device import allocator_bytes, peak_allocator_bytes, reset_peak_memory, synchronize

BACKENDS = ("naive", "sdpa")


def score_bytes(batch: int, heads: int, t: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one (B, H, T, T) score tensor: B * H * T^2 * bytes per element of ``dtype``
    (4 in float32, 2 in bfloat16)."""
    return batch * heads * t * t * torch.empty((), dtype=dtype).element_size()


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def attention_fn(backend: str) -> AttentionFn:
    """Causal attention q, k, v (B, H, T, d_k) -> (B, H, T, d_k) by ``backend``: ``naive`` =
    lmlab's explicit softmax(q k^T / sqrt(d_k) + M) v, ``sdpa`` = PyTorch's fused one."""
    if backend == "naive":
        def naive(q, k, v):
            mask = causal_mask(q.size(-2), device=q.device)  # (T, T)
            return scaled_dot_product_attention(q, k, v, mask)[0]

        return naive
    if backend == "sdpa":
        return lambda q, k, v: fused_attention(q, k, v, is_causal=True)
    raise ValueError(f"backend={backend!r} is invalid: expected one of {', '.join(BACKENDS)}.")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (the profiler's start/stop lines) for the duration."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_allocations(fn: Callable[[], torch.Tensor]) -> tuple[int, int]:
    """(total bytes allocated, largest single allocation) during ``fn()``, from torch.profiler."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
    return sum(sizes), max(sizes, default=0)


def measure(backend: str, t: int, *, batch: int = 1, heads: int = 4, head_dim: int = 32,
            repeats: int = 3, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Time and memory of one causal attention call at sequence length ``t``.

    Returns a row: backend, T, seconds (median of ``repeats`` after one warm-up call),
    score_bytes (computed), and measured memory: ``peak_bytes`` (CUDA and MPS allocators: peak
    above the inputs) or ``allocated_bytes`` and ``largest_alloc_bytes`` (CPU, profiler).
    """
    if t < 1 or repeats < 1:
        raise ValueError(f"t={t} and repeats={repeats} must both be >= 1.")
    device = torch.device(device)
    fn = attention_fn(backend)
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, t, head_dim, device=device, dtype=dtype, generator=gen)
               for _ in range(3))  # 3 x (B, H, T, d_k)

    row = {"backend": backend, "T": t, "score_bytes": score_bytes(batch, heads, t, dtype)}
    with torch.no_grad():
        fn(q, k, v)  # warm-up
        synchronize(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(q, k, v)
            synchronize(device)
            times.append(time.perf_counter() - start)
        row["seconds"] = statistics.median(times)
        if device.type in ("cuda", "mps"):
            reset_peak_memory(device)
            before = allocator_bytes(device)
            fn(q, k, v)
            synchronize(device)
            row["peak_bytes"] = peak_allocator_bytes(device) - before
        else:
            row["allocated_bytes"], row["largest_alloc_bytes"] = _cpu_allocations(
                lambda: fn(q, k, v))
    return row


def sweep_lengths(lengths: Sequence[int], backends: Sequence[str] = BACKENDS,
                  **kwargs) -> list[dict]:
    """:func:`measure` for every backend and length: tidy rows, one per (backend, T)."""
    return [measure(b, t, **kwargs) for b in backends for t in lengths]

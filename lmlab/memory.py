"""Where the memory of a training step goes, computed from the model's shapes and measured.

For a model with N parameters trained in fp32 with AdamW:

    parameters          4 N bytes
    gradients           4 N bytes
    optimizer state     8 N bytes  (two fp32 moments m, v per weight) + 4 bytes per tensor (step)
    activations         what autograd saves for the backward pass, proportional to B * T

The activation count is written out for :class:`lmlab.Transformer` with the ``sdpa`` backend,
no dropout, fp32, as PyTorch's CPU kernels save it (per token, per layer, C = d_model, H heads):

    LayerNorm 1: its input x (C) and mean, 1/std (2)       qkv Linear: its input LN(x) (C)
    SDPA: q, k, v as views of one (3C) output, the output (C), the log-sum-exp (H)
    LayerNorm 2: its input (C) and (2)                     fc: its input (C)
    GELU: its input (4C)                                   proj: the GELU output (4C)
    => 16 C + 4 + H floats per token per layer

plus, once: the final LayerNorm's input, statistics and output (2C + 2), the log-softmax of the
cross-entropy (V), the token ids (int64) and, with learned positions, the position ids (T int64).

:class:`MemoryTracker` measures: it is a ``TorchDispatchMode`` that sees every tensor an operator
creates, counts its storage's bytes while the storage is alive and records the peak. It counts
only storages created while it is active (tensors made before are not its business), so a
measurement is "bytes allocated since the start". On CUDA, ``torch.cuda.max_memory_allocated``
is the allocator's own count; on CPU, torch's allocator keeps no statistics, hence the tracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .model import Transformer

FP32 = 4  # bytes per float32
INT64 = 8


def parameter_count(config: ModelConfig) -> int:
    """Parameters of ``Transformer(config)`` from its shapes (tied weights counted once).

    per layer: 2 LayerNorms 2*2C, qkv C*3C + 3C, proj C*C + C, fc C*rC + rC, out rC*C + C
    (biases only with ``config.bias``); embeddings V*C (+ T*C learned positions);
    final LayerNorm 2C; lm_head V*C unless tied.
    """
    c, r, v = config.d_model, config.mlp_ratio, config.vocab_size
    b = 1 if config.bias else 0
    ln = 2 * c if config.bias else c
    layer = 2 * ln + (3 * c * c + b * 3 * c) + (c * c + b * c) + (r * c * c + b * r * c) \
        + (r * c * c + b * c)
    n = config.n_layer * layer + v * c + ln
    if config.pos == "learned":
        n += config.block_size * c
    if not config.tie_weights:
        n += v * c
    return n


def activation_bytes(config: ModelConfig, batch_size: int, seq_len: int | None = None,
                     checkpointing: bool = False) -> dict:
    """Bytes autograd saves for backward in one fp32 forward pass of B x T tokens (see the module
    docstring for the count); a dict of parts and their ``total``. With ``checkpointing`` (see
    :func:`checkpoint_blocks`) a block keeps only its input: C floats per token per layer."""
    if config.attention != "sdpa" or config.dropout != 0.0:
        raise ValueError("activation_bytes counts the sdpa backend without dropout; got "
                         f"attention={config.attention!r}, dropout={config.dropout}. Use "
                         "ModelConfig(attention='sdpa', dropout=0.0) or measure instead.")
    t = seq_len or config.block_size
    tokens = batch_size * t
    c, h, v, r = config.d_model, config.n_head, config.vocab_size, config.mlp_ratio
    per_layer = tokens * ((1 + 1 + 3 + 1 + 1 + 1 + 2 * r) * c + 4 + h) * FP32
    if checkpointing:
        per_layer = tokens * c * FP32
    parts = {
        "blocks": config.n_layer * per_layer,
        "final LayerNorm": tokens * (2 * c + 2) * FP32,
        "log-softmax": tokens * v * FP32,
        "token and position ids": tokens * INT64 + (t * INT64 if config.pos == "learned" else 0),
        "loss": FP32,
    }
    parts["total"] = sum(parts.values())
    return parts


def training_memory(config: ModelConfig, batch_size: int, seq_len: int | None = None,
                    checkpointing: bool = False) -> dict:
    """The four parts of a fp32 AdamW training step's memory, in bytes (and their ``total``).

    AdamW also keeps a one-float step counter per parameter tensor (4 bytes each, 0-dim tensors):
    a few hundred bytes, left out here; :func:`measure_training_step` sees them.
    """
    n = parameter_count(config)
    parts = {
        "parameters": FP32 * n,
        "gradients": FP32 * n,
        "optimizer state": 2 * FP32 * n,
        "activations": activation_bytes(config, batch_size, seq_len, checkpointing)["total"],
    }
    parts["total"] = sum(parts.values())
    return parts


class MemoryTracker(TorchDispatchMode):
    """Counts the bytes of every tensor storage created while active, until it is freed.

    ``current``: bytes alive now; ``peak``: the most alive after any operator. Outputs that share
    a storage with an input (views, in-place ops) are not new memory and are not counted.
    ``torch.tensor(data)`` fills its storage outside the dispatcher and only then hands it to
    ``aten.lift_fresh``, whose output is its input: that storage is counted as new (AdamW's
    per-tensor ``step`` counters are made this way), unless it borrows memory torch did not
    allocate (``torch.from_numpy``, ``torch.as_tensor`` of an array: not resizable).

        with MemoryTracker() as mem:
            loss = model(x).sum(); loss.backward()
        mem.peak, mem.current
    """

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        dead = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in dead:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        kwargs = kwargs or {}
        fresh = func is torch.ops.aten.lift_fresh.default  # torch.tensor(data): a new storage
        inputs = set() if fresh else {t.untyped_storage()._cdata
                                      for t in tree_leaves((args, kwargs))
                                      if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._live or (fresh and not storage.resizable()):
                continue
            self._live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out

    def alive(self) -> int:
        """Bytes still alive now (after collecting the ones freed since the last operator)."""
        self._sweep()
        return self.current


@dataclass
class StepMemory:
    """Measured bytes of one fp32 AdamW training step on CPU, each part as allocated."""

    parameters: int
    activations: int     # alive after the forward pass, minus the logits the caller holds
    gradients: int       # new after backward, once the activations are freed
    optimizer_state: int  # new after the first optimizer step: m, v and the step counters
    peak: int            # the most alive at once over build + forward + backward + step


def measure_training_step(config: ModelConfig, x: torch.Tensor, y: torch.Tensor,
                          checkpointing: bool = False) -> StepMemory:
    """Build ``Transformer(config)``, run one forward, backward and AdamW step on ids x, y (B, T)
    under a :class:`MemoryTracker`, and report what each stage left allocated."""
    with MemoryTracker() as mem:
        model = Transformer(config)
        if checkpointing:
            checkpoint_blocks(model)
        params = mem.alive()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
        logits = model(x)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        activations = mem.alive() - params - logits.untyped_storage().nbytes()
        del logits
        loss.backward()
        del loss
        grads = mem.alive() - params
        optimizer.step()
        state = mem.alive() - params - grads
    return StepMemory(params, activations, grads, state, mem.peak)


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Activation checkpointing on each block of a Transformer (in place; returns the model).

    A checkpointed block keeps only its input during the forward pass and runs its forward again
    inside backward to rebuild what it needs: saved memory per layer drops from (16C + 4 + H) to
    C floats per token, for the price of one more forward pass of every block.
    """
    for block in model.blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = checkpointed
    return model


def time_training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       repeats: int = 5) -> float:
    """Fastest of ``repeats`` forward + backward passes, in seconds (the minimum is the least
    disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        logits = model(x)  # (B, T, V)
        nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        best = min(best, time.perf_counter() - start)
    return best


ZERO_STAGES = {0: "plain data parallelism (DDP): everything replicated",
               1: "ZeRO-1: optimizer state sharded",
               2: "ZeRO-2: optimizer state and gradients sharded",
               3: "ZeRO-3 / FSDP: optimizer state, gradients and parameters sharded"}


def sharded_memory_per_rank(n_params: int, world_size: int, stage: int,
                            bytes_param: int = FP32, bytes_grad: int = FP32,
                            bytes_optimizer: int = 2 * FP32) -> dict:
    """Bytes of model state per rank under ZeRO stage 0-3 (Rajbhandari et al. 2020), activations
    aside. With N parameters and W ranks, a sharded part costs its bytes * N / W per rank:

        stage 0: (p + g + o) N          stage 1: (p + g) N + o N / W
        stage 2: p N + (g + o) N / W    stage 3: (p + g + o) N / W

    (p, g, o: bytes per parameter of weights, gradients, optimizer state; fp32 AdamW: 4, 4, 8).
    """
    if stage not in ZERO_STAGES:
        raise ValueError(f"stage={stage!r} is invalid: expected 0, 1, 2 or 3 ({ZERO_STAGES}).")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} is invalid: expected an integer >= 1.")
    shard = {"parameters": stage >= 3, "gradients": stage >= 2, "optimizer state": stage >= 1}
    size = {"parameters": bytes_param, "gradients": bytes_grad, "optimizer state": bytes_optimizer}
    parts = {k: size[k] * n_params / (world_size if shard[k] else 1) for k in size}
    parts["total"] = sum(parts.values())
    return parts


def measure_cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes the CUDA caching allocator handed out while ``fn()`` ran, above the start."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start

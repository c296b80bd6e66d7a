"""Low-rank adapters (LoRA; Hu et al., 2021), written out.

A frozen linear layer ``y = W x + b`` (W: (out, in)) gets a trainable low-rank correction:

    y = W x + b + (alpha / r) * B A x        A: (r, in), B: (out, r), r << min(in, out)

A starts random (Kaiming-uniform, as ``nn.Linear`` initializes its weights) and B at zero, so
the adapted model computes exactly what the base model computes until B moves. Only A and B
train: r * (in + out) numbers per matrix instead of in * out. After training the correction folds
into the weight, ``W' = W + (alpha / r) B A``, and the merged model costs nothing extra at
inference (PEFT's ``merge_and_unload`` has the same meaning).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .device import generator_device

# The linear layers of a Transformer block that adapters can target (names inside a Block).
TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` with ``base`` frozen and (A, B) trainable."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        out_features, in_features = base.weight.shape
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(
                in_features, out_features):
            raise ValueError(f"rank={rank!r} is invalid: expected an integer in "
                             f"[1, {min(in_features, out_features)}] for a {out_features}x"
                             f"{in_features} weight.")
        alpha = float(rank if alpha is None else alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha={alpha!r} is invalid: expected a positive number.")
        self.base = base
        self.in_features, self.out_features = in_features, out_features  # as nn.Linear has
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=w.device, dtype=w.dtype))
        # nn.Linear's own init for A: U(-1/sqrt(in), 1/sqrt(in)) (Kaiming uniform, a = sqrt(5))
        bound = 1 / math.sqrt(in_features)
        with torch.no_grad():
            a = torch.rand(rank, in_features, generator=generator, dtype=torch.float32,
                           device=generator_device(generator))  # copied to w's device below
            self.lora_a.copy_((2 * a - 1) * bound)

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A: the (out, in) matrix the adapter adds to W."""
        return self.scale * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_rank = (x @ self.lora_a.t()) @ self.lora_b.t()  # (..., r) -> (..., out)
        return self.base(x) + self.scale * low_rank

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear with W + (alpha / r) B A and the base bias."""
        out_features, in_features = self.base.weight.shape
        w = self.base.weight
        layer = nn.Linear(in_features, out_features, bias=self.base.bias is not None,
                          device=w.device, dtype=w.dtype)
        layer.weight.copy_(w + self.delta_weight().to(w.dtype))
        if self.base.bias is not None:
            layer.bias.copy_(self.base.bias)
        return layer


def _block_linears(model: nn.Module, targets: tuple[str, ...]):
    """(parent module, attribute name, layer) for every targeted linear in every block."""
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        raise ValueError(f"targets={targets!r} is invalid: expected a non-empty subset of "
                         f"{TARGETS}.")
    for block in model.blocks:
        for target in targets:
            parent_name, attr = target.split(".")
            parent = getattr(block, parent_name)
            yield parent, attr, getattr(parent, attr)


def add_lora(model: nn.Module, rank: int, alpha: float | None = None,
             targets: tuple[str, ...] = TARGETS, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every weight frozen and a :class:`LoRALinear` on each targeted
    linear layer of each block (A drawn with ``seed``). The original model is left untouched."""
    adapted = copy.deepcopy(model)
    for p in adapted.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for parent, attr, layer in list(_block_linears(adapted, targets)):
        if isinstance(layer, LoRALinear):
            raise ValueError(f"{attr} already has an adapter: merge it first (merge_lora).")
        setattr(parent, attr, LoRALinear(layer, rank, alpha, generator))
    return adapted


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each adapter folded into its weight (plain nn.Linear layers)."""
    merged = copy.deepcopy(model)
    for block in merged.blocks:
        for target in TARGETS:
            parent_name, attr = target.split(".")
            parent = getattr(block, parent_name)
            layer = getattr(parent, attr)
            if isinstance(layer, LoRALinear):
                setattr(parent, attr, layer.merged())
    return merged


def lora_parameter_count(model: nn.Module, rank: int, targets: tuple[str, ...] = TARGETS) -> int:
    """sum over targeted layers of r * (in + out): what :func:`add_lora` trains."""
    return sum(rank * (layer.in_features + layer.out_features)
               for _, _, layer in _block_linears(model, targets))


def trainable_parameters(model: nn.Module) -> int:
    """Parameters with ``requires_grad`` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

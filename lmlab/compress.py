"""Making a trained model smaller: int8 weight quantization and magnitude pruning.

Symmetric int8 quantization of a weight matrix W (out, in) with scale s:

    q = clamp(round(W / s), -127, 127)      W_hat = s q
    per tensor:  s = max |W| / 127                        (one scale for the matrix)
    per channel: s_o = max_i |W_oi| / 127                 (one scale per output row)

The rounding error is at most s / 2 per weight, so one large weight in a matrix coarsens every
other weight's grid under a per-tensor scale, and only its own row's under per-channel scales.
Storage: 1 byte per weight + 4 bytes per scale, against 4 bytes per fp32 weight.

Magnitude pruning sets to zero the weights of smallest magnitude:

    unstructured: the fraction s of entries of W with smallest |W_oi| (anywhere in the matrix)
    structured:   the fraction s of rows of W with smallest L2 norm ||W_o||  (whole output
                  units: a smaller dense matrix, which real hardware can exploit)

Both act on the Linear layers of the Transformer blocks (qkv, attention output, MLP); the tied
embedding / output matrix, LayerNorms and biases are left alone.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

GRANULARITIES = ("tensor", "channel")
PRUNING = ("unstructured", "rows")
QMAX = 127


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: expected one of {choices}.")


def int8_scales(weight: torch.Tensor, granularity: str = "channel") -> torch.Tensor:
    """Scale(s) s = max|W| / 127: shape () per tensor, (out, 1) per channel (row)."""
    _check("granularity", granularity, GRANULARITIES)
    if granularity == "tensor":
        amax = weight.abs().amax()  # ()
    else:
        amax = weight.abs().amax(dim=1, keepdim=True)  # (out, 1)
    return amax.clamp_min(torch.finfo(weight.dtype).tiny) / QMAX


def quantize_int8(weight: torch.Tensor, granularity: str = "channel"):
    """W (out, in) -> (q int8 (out, in), scale): q = clamp(round(W / s), -127, 127)."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight (out, in); got shape {tuple(weight.shape)}.")
    scale = int8_scales(weight, granularity)
    q = torch.clamp(torch.round(weight / scale), -QMAX, QMAX).to(torch.int8)  # (out, in)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W_hat = s q, in float32."""
    return q.float() * scale


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers inside the Transformer blocks (what this module compresses)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("blocks.")]


def quantized_copy(model: nn.Module, granularity: str = "channel") -> tuple[nn.Module, dict]:
    """A copy of ``model`` whose block Linear weights are replaced by their int8 round trip
    (simulated quantization: same arithmetic, fp32 storage), and a report: ``fp32`` bytes of
    those weights, ``int8`` bytes (1 per weight + 4 per scale), and the rounding error
    e = W_hat - W over all of them: ``max_error`` = max |e|, ``rms_error`` = sqrt(sum e^2 / n).

    The worst error is set by the largest scale, which per-channel scales share with the
    per-tensor one in the row holding the largest weight, so ``max_error`` barely tells the two
    apart; ``rms_error`` averages over every row and does."""
    model = copy.deepcopy(model)
    fp32 = int8 = 0
    max_error, squared_error = 0.0, 0.0
    with torch.no_grad():
        for _, linear in block_linears(model):
            q, scale = quantize_int8(linear.weight, granularity)
            restored = dequantize_int8(q, scale)  # (out, in)
            error = restored - linear.weight
            max_error = max(max_error, float(error.abs().max()))
            squared_error += float(error.double().pow(2).sum())
            linear.weight.copy_(restored)
            fp32 += 4 * q.numel()
            int8 += q.numel() + 4 * scale.numel()
    rms_error = math.sqrt(squared_error / max(1, fp32 // 4))
    return model, {"fp32": fp32, "int8": int8, "max_error": max_error, "rms_error": rms_error}


def magnitude_mask(weight: torch.Tensor, sparsity: float,
                   kind: str = "unstructured") -> torch.Tensor:
    """Boolean keep-mask (out, in) zeroing a fraction ``sparsity`` of W by magnitude: the
    smallest |W_oi| (unstructured) or the rows of smallest L2 norm (``rows``). Ties are broken
    by position, so exactly round(sparsity * count) entries or rows are pruned."""
    _check("kind", kind, PRUNING)
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity={sparsity!r} is invalid: expected a fraction in [0, 1].")
    score = weight.abs().flatten() if kind == "unstructured" else weight.norm(dim=1)  # (n,)
    k = round(sparsity * score.numel())
    keep = torch.ones_like(score, dtype=torch.bool)
    if k:
        keep[torch.argsort(score, stable=True)[:k]] = False
    return keep.view_as(weight) if kind == "unstructured" else keep[:, None].expand_as(weight)


def pruned_copy(model: nn.Module, sparsity: float, kind: str = "unstructured"):
    """A copy of ``model`` with each block Linear weight pruned by :func:`magnitude_mask`, and
    the masks by layer name (to keep pruned weights at zero while fine-tuning)."""
    model = copy.deepcopy(model)
    masks = {}
    with torch.no_grad():
        for name, linear in block_linears(model):
            mask = magnitude_mask(linear.weight, sparsity, kind)
            linear.weight.mul_(mask)
            masks[name] = mask
    return model, masks


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exact zeros among the block Linear weights."""
    weights = [linear.weight for _, linear in block_linears(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def fine_tune_pruned(model: nn.Module, masks: dict, batches, steps: int,
                     lr: float = 1e-3) -> nn.Module:
    """Recovery fine-tune: ``steps`` AdamW steps (no weight decay) on the (x, y) batches, cycling,
    re-applying the masks after each step so pruned weights stay zero. In place; returns it."""
    linears = dict(block_linears(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        logits = model(x)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, mask in masks.items():
                linears[name].weight.mul_(mask)
    return model.eval()

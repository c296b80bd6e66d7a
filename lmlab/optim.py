"""Parameter groups, optimizer construction and learning-rate schedules.

Weight decay goes to the matrices of linear layers only: biases, LayerNorm gains and embeddings
(including the output layer tied to them) are not decayed. Shrinking a LayerNorm gain or a bias
toward zero is not a useful prior, and decaying rare tokens' embeddings erases them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig
from .optimizers import Muon


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ``decay`` (nn.Linear weights not tied to an embedding) and ``no_decay``."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = {
        id(m.weight) for m in model.modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in embedding_ids
    }
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():  # parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if id(p) in decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def _fused_available(device: torch.device | None) -> bool | None:
    """Fused (single-kernel) Adam/AdamW: on CUDA, and on CPU from PyTorch 2.4 on, where it is
    about three times faster than the per-tensor loop for small models. None: PyTorch's default."""
    if device is None:
        return None
    if device.type == "cuda":
        return True
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return True if device.type == "cpu" and (major, minor) >= (2, 4) else None


def build_optimizer(model: nn.Module, config: TrainConfig,
                    device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over :func:`param_groups` (fused where possible).

    ``muon``: :class:`lmlab.optimizers.Muon` with momentum ``config.momentum`` on the ``decay``
    group (the hidden matrices), AdamW with ``config.betas`` on the rest, one learning rate.
    """
    custom = getattr(model, "optimizer_groups", None)  # a model's own groups (muP's lr_scale)
    groups = (custom(config.weight_decay) if callable(custom)
              else param_groups(model, config.weight_decay))
    name = config.optimizer
    fused = _fused_available(device)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                 fused=fused)
    if name == "adam":  # L2 penalty through the gradient (coupled), as in the original Adam
        return torch.optim.Adam(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=name == "nesterov")
    if name == "muon":  # Newton-Schulz orthogonalized momentum for the decayed matrices
        for group in groups:
            group["use_muon"] = group.get("name") == "decay"
        return Muon(groups, lr=config.lr, momentum=config.momentum, betas=tuple(config.betas),
                    eps=config.eps)
    raise ValueError(f"optimizer={name!r} has no builder.")


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (1-based, 1 .. config.steps).

    Warmup: lr * step / warmup_steps for step <= warmup_steps. Then, with progress
    p = (step - warmup) / (steps - warmup) in [0, 1] and floor m = config.final_lr:
    cosine: m + (lr - m) * (1 + cos(pi p)) / 2; linear: lr + (m - lr) p; constant: lr;
    wsd: lr until the last ``decay_fraction`` of all steps, then linear to m.
    """
    lr, m, warm, total = config.lr, config.final_lr, config.warmup_steps, config.steps
    if warm and step <= warm:
        return lr * step / warm
    p = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
    if config.schedule == "cosine":
        return m + (lr - m) * 0.5 * (1.0 + math.cos(math.pi * p))
    if config.schedule == "linear":
        return lr + (m - lr) * p
    if config.schedule == "wsd":
        decay_start = total * (1.0 - config.decay_fraction)
        if step <= decay_start:
            return lr
        return lr + (m - lr) * (step - decay_start) / max(1e-12, total - decay_start)
    return lr

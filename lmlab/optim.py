"""Parameter groups, optimizer construction and learning-rate schedules.

Weight decay goes to the matrices of linear layers only: biases, LayerNorm gains and embeddings
(including the output layer tied to them) are not decayed. This is minGPT's rule; nanoGPT decays
every tensor with dim >= 2, embeddings included (``lmlab.regularization.matrix_decay_groups``).
Shrinking a LayerNorm gain or a bias toward zero is not a useful prior. For embeddings it is a
trade-off, not a rule: with tied weights every row also gets gradient from the output softmax, and
decaying the shared matrix shrinks the logits (chapter 5 measures both rules).
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

    ``muon``: :class:`lmlab.optimizers.Muon` with momentum ``config.momentum`` on the hidden
    matrices (the ``decay`` group without the output layer), AdamW with ``config.betas`` on the
    rest, one learning rate. An untied output layer (``tie_weights=False``) is a decayed matrix but
    not a hidden one: it goes to AdamW with weight decay, as Jordan et al. (2024) prescribe.
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
    if name == "muon":  # Newton-Schulz orthogonalized momentum for the hidden matrices
        return Muon(muon_groups(model, groups), lr=config.lr, momentum=config.momentum,
                    betas=tuple(config.betas), eps=config.eps)
    raise ValueError(f"optimizer={name!r} has no builder.")


def output_layer_weights(model: nn.Module) -> set[int]:
    """ids of the weights that map the last hidden state to the logits (``lm_head``; with tied
    weights this is the token embedding, which is never in a ``decay`` group anyway)."""
    head = getattr(model, "lm_head", None)
    return {id(head.weight)} if isinstance(head, nn.Linear) else set()


def muon_groups(model: nn.Module, groups: list[dict]) -> list[dict]:
    """``groups`` with ``use_muon`` set: True for the ``decay`` matrices that are hidden layers,
    False for everything else. An output layer found in the ``decay`` group is split off into a
    group of its own (``name="output"``, same weight decay, AdamW): Muon is for hidden layers only.
    """
    head = output_layer_weights(model)
    out = []
    for group in groups:
        if group.get("name") != "decay":
            out.append({**group, "use_muon": False})
            continue
        hidden = [p for p in group["params"] if id(p) not in head]
        output = [p for p in group["params"] if id(p) in head]
        out.append({**group, "params": hidden, "use_muon": True})
        if output:
            out.append({**group, "params": output, "use_muon": False, "name": "output"})
    return out


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr * group["lr_scale"]`` (scale 1 when a
    group has none; muP's hidden matrices have 1 / width_mult). The one place an lr is written."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (1-based, 1 .. config.steps).

    Warmup: lr * step / warmup_steps for step <= warmup_steps. Then, with progress
    p = (step - warmup) / (steps - warmup) in [0, 1] and floor m = config.final_lr:
    cosine: m + (lr - m) * (1 + cos(pi p)) / 2; linear: lr + (m - lr) p; constant: lr;
    wsd: lr until step D = max(warmup, steps * (1 - decay_fraction)), then linear to m at the
    last step: lr + (m - lr) (step - D) / (steps - D). Taking the max keeps the schedule
    continuous when the warmup ends after the decay would start: the decay then begins where the
    warmup ends, at the peak, instead of jumping down to the middle of its ramp.
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
        decay_start = max(float(warm), total * (1.0 - config.decay_fraction))
        if step <= decay_start:
            return lr
        return lr + (m - lr) * (step - decay_start) / max(1e-12, total - decay_start)
    return lr

"""The maximal update parametrization (muP, Yang et al. 2022) for :class:`lmlab.Transformer`.

Tune a small model, then widen it keeping the same hyperparameters. With m = d_model / base_d_model
the width multiplier, muP for Adam (Yang et al. 2022, Table 8) changes, relative to the standard
parametrization (SP) of the base model:

    hidden matrices (qkv, attn.proj, mlp.fc, mlp.proj)   init std / sqrt(m)     Adam lr / m
    input embeddings (tokens, positions), biases, LN     unchanged              lr
    output layer (lm_head, untied)                       logits * output_mult / m,   lr
    attention logits                                     q.k * attn_mult * sqrt(d_k0) / d_k

(d_k, d_k0: head sizes at this width and at the base width). At m = 1 the model is the SP
model: same weights for the same seed, same outputs. Under SP an Adam step moves a hidden
pre-activation by an amount that grows with the width (every one of the fan_in coordinates moves by
about lr, coherently); muP's lr / m and the 1/m on the logits keep each coordinate's change of
order one at every width, so the best learning rate stays put as the model grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .config import ModelConfig, TrainConfig
from .diagnostics import ActivationRecorder
from .model import Builder, Transformer
from .objectives import clm_loss
from .optim import build_optimizer, set_lr


class MuReadout(nn.Linear):
    """The output layer with a forward multiplier: y = (W x) * multiplier."""

    multiplier: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.multiplier


class QueryScaledLinear(nn.Linear):
    """The fused q/k/v projection with the query part multiplied: [q * q_mult, k, v]. A query
    multiplier c turns softmax(q.k / sqrt(d_k)) into softmax(c q.k / sqrt(d_k))."""

    q_mult: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)  # (B, T, 3 C)
        c = out.size(-1) // 3
        return torch.cat([out[..., :c] * self.q_mult, out[..., c:]], dim=-1)  # (B, T, 3 C)


def _as(module: nn.Linear, cls: type[nn.Linear], **attributes) -> nn.Linear:
    """Turn an nn.Linear into the subclass ``cls`` in place, keeping its parameters."""
    module.__class__ = cls
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


class MuTransformer(Transformer):
    """:class:`lmlab.Transformer` in muP, relative to a base width ``base_d_model``.

    Built as the SP model (GPT-2 init from ``config``), then: hidden weights multiplied by
    1 / sqrt(m), ``lm_head`` given the multiplier output_mult / m, queries the multiplier
    attn_mult * sqrt(d_k0 / d_k) (so q.k is divided by d_k, not sqrt(d_k)), and
    :meth:`optimizer_groups` giving hidden matrices ``lr_scale = 1 / m``.
    """

    def __init__(self, config: ModelConfig, base_d_model: int, *, output_mult: float = 1.0,
                 attn_mult: float = 1.0):
        if config.tie_weights:
            raise ValueError("muP treats the input embedding and the output layer differently, so "
                             "they cannot share one matrix: use ModelConfig(tie_weights=False).")
        if (not isinstance(base_d_model, int) or base_d_model < config.n_head
                or base_d_model % config.n_head):
            raise ValueError(f"base_d_model={base_d_model!r} is invalid: expected a positive "
                             f"multiple of n_head={config.n_head} (the width the lr was tuned at).")
        super().__init__(config)
        self.base_d_model = base_d_model
        self.width_mult = config.d_model / base_d_model
        base_head_dim = base_d_model // config.n_head
        _as(self.lm_head, MuReadout, multiplier=output_mult / self.width_mult)
        for block in self.blocks:
            _as(block.attn.qkv, QueryScaledLinear,
                q_mult=attn_mult * math.sqrt(base_head_dim / config.head_dim))
        self._scale_hidden()

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The weights whose both dimensions grow with the width (the blocks' linear layers)."""
        return [m.weight for block in self.blocks for m in block.modules()
                if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def _scale_hidden(self) -> None:
        for w in self.hidden_matrices():
            w.mul_(1.0 / math.sqrt(self.width_mult))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "width_mult"):  # not while Transformer.__init__ first calls it
            self._scale_hidden()

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Parameter groups for :func:`lmlab.optim.build_optimizer`: hidden matrices at
        ``lr_scale = 1 / m`` with weight decay; lm_head at lr_scale 1 with weight decay;
        embeddings, biases and LayerNorm at lr_scale 1 without (as :func:`optim.param_groups`)."""
        hidden = {id(w) for w in self.hidden_matrices()}
        groups = {"hidden": [], "readout": [], "no_decay": []}
        for p in self.parameters():
            if id(p) in hidden:
                groups["hidden"].append(p)
            elif p is self.lm_head.weight:
                groups["readout"].append(p)
            else:
                groups["no_decay"].append(p)
        return [
            {"params": groups["hidden"], "weight_decay": weight_decay,
             "lr_scale": 1.0 / self.width_mult, "name": "decay"},
            {"params": groups["readout"], "weight_decay": weight_decay, "lr_scale": 1.0,
             "name": "readout"},
            {"params": groups["no_decay"], "weight_decay": 0.0, "lr_scale": 1.0,
             "name": "no_decay"},
        ]


def mup_builder(base_d_model: int, **kwargs) -> Builder:
    """The :class:`lmlab.model.Builder` ``config -> MuTransformer(config, base_d_model, **kwargs)``
    for ``run_experiment``, named ``mup:base=<base_d_model>,<kwargs>`` in the cache."""

    def build(config: ModelConfig) -> MuTransformer:
        return MuTransformer(config, base_d_model, **kwargs)

    name = f"mup:base={base_d_model}" + "".join(f",{k}={v}" for k, v in sorted(kwargs.items()))
    return Builder(name, build)


def best_lr(lrs: Sequence[float], losses: Sequence[float], span_octaves: float = 2.0) -> float:
    """The learning rate at the minimum of a parabola in log(lr) fitted, by least squares, to the
    lowest loss and every grid point within ``span_octaves`` octaves of it (at least its two
    neighbours): a grid's best point, refined between grid points:

        i = argmin losses;  W = {j : |log2 lr_j - log2 lr_i| <= span_octaves} (finite losses)
        fit loss = a u^2 + b u + c over u = log lr_j, j in W (least squares)
        best = exp(clamp(-b / (2 a), min u, max u))

    The window is a fixed range of log(lr), not a number of points, so a fine grid averages over
    more points: where the basin is flat (losses a few thousandths apart over two octaves, as a
    muP sweep has), three points locate its noise, a wider fit its centre. On a grid coarser than
    ``span_octaves`` the window is the three points around the minimum, where the parabola is
    exact. At the edge of the grid, with a diverged neighbour or a non-convex fit, the grid's
    best lr is returned. ``lrs`` must be increasing; non-finite losses count as +inf."""
    if len(lrs) != len(losses) or len(lrs) < 1:
        raise ValueError(f"need as many losses as lrs (got {len(lrs)} lrs, {len(losses)} losses).")
    if any(b <= a for a, b in zip(lrs[:-1], lrs[1:], strict=True)) or lrs[0] <= 0:
        raise ValueError(f"lrs={list(lrs)} must be positive and increasing.")
    if not span_octaves > 0:
        raise ValueError(f"span_octaves={span_octaves!r} must be positive.")
    vals = [v if math.isfinite(v) else math.inf for v in losses]
    i = min(range(len(vals)), key=vals.__getitem__)
    if i == 0 or i == len(vals) - 1 or not math.isfinite(vals[i - 1] + vals[i + 1]):
        return float(lrs[i])
    octaves = [math.log2(lr / lrs[i]) for lr in lrs]
    window = [j for j in range(len(lrs)) if math.isfinite(vals[j])
              and (abs(octaves[j]) <= span_octaves * (1 + 1e-9) or abs(j - i) == 1)]
    u = torch.tensor([math.log(lrs[j]) for j in window], dtype=torch.float64)  # (n,)
    y = torch.tensor([vals[j] for j in window], dtype=torch.float64)  # (n,)
    design = torch.stack([u * u, u, torch.ones_like(u)], dim=1)  # (n, 3)
    a, b, _ = torch.linalg.lstsq(design, y[:, None]).solution[:, 0].tolist()
    if a <= 0:
        return float(lrs[i])
    lo, hi = math.log(lrs[window[0]]), math.log(lrs[window[-1]])
    return float(math.exp(min(max(-b / (2 * a), lo), hi)))


def coordinate_check(make_model: Callable[[int], nn.Module], widths: Sequence[int],
                     x: torch.Tensor, y: torch.Tensor, *, steps: int = 4, lr: float = 1e-2,
                     seed: int = 0, device: str | torch.device = "cpu") -> list[dict]:
    """The coordinate check of Yang et al. (2022): for each width, build ``make_model(width)``
    (after ``torch.manual_seed(seed)``), take ``steps`` Adam steps (lr_scale per group, as in
    training) on the batch (x, y), and record, before each step and after the last, the mean
    absolute value of one coordinate of: the embedding output, each block's output and the logits.

    Models are built on the CPU (same weights for the same seed anywhere) and moved to ``device``.
    Returns rows ``{"width", "step", "layer", "l1"}``. In a parametrization that is right for
    width, the curves l1 against width are flat at every step.
    """
    rows = []
    for width in widths:
        torch.manual_seed(seed)
        model = make_model(width).to(device)
        model.train()
        x, y = x.to(device), y.to(device)
        layers = {"embedding": model.drop, **{f"block{i + 1}": b for i, b in
                                              enumerate(model.blocks)}, "logits": model.lm_head}
        config = TrainConfig(lr=lr, weight_decay=0.0, warmup_steps=0, schedule="constant",
                             grad_clip=None, progress=False)
        optimizer = build_optimizer(model, config)
        set_lr(optimizer, lr)
        for step in range(steps + 1):
            with ActivationRecorder(layers) as rec:
                logits = model(x)  # (B, T, V)
            rows += [{"width": width, "step": step, "layer": name, "l1": s.act_abs_mean}
                     for name, s in rec.stats.items()]
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            clm_loss(logits, y).backward()
            optimizer.step()
    return rows

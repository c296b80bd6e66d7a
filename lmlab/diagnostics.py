"""Per-layer statistics of a network: activations and gradients through hooks, and the
update-to-data ratio of each parameter from the change an optimizer step actually made.

    activation std of layer l:   std(h_l)                    over every entry of the layer's output
    gradient std of layer l:     std(dL/dh_l)                (the gradient flowing back into h_l)
    update-to-data ratio:        ||theta_t - theta_{t-1}|| / ||theta_{t-1}||

The ratio is measured from the parameters before and after a step, so it is right for any
optimizer. The shortcut lr * ||g|| / ||theta|| holds for plain SGD only: Adam divides each
coordinate by its own running RMS, and its first step moves every coordinate by about lr.

    loss at initialization:      ln V + s^2 / 2 + (m - z_y) + O(s^3)   (logits of small spread s)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerStats:
    """What one probe saw at one layer: std, mean |x| and an evenly strided sample of the
    output (``act_sample``), and the same of the gradient flowing into it (``grad_*``; None
    when no backward pass ran)."""

    name: str
    act_std: float
    act_abs_mean: float
    act_sample: torch.Tensor
    grad_std: float | None = None
    grad_sample: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def _statistics_dtype(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in float32 at least: half precision is widened, float64 is kept (a float64
    probe of an exploding stack must not overflow to inf when its statistics are taken)."""
    t = t.detach()
    return t if t.dtype == torch.float64 else t.float()


def _sample(t: torch.Tensor, max_samples: int) -> torch.Tensor:
    flat = _statistics_dtype(t).flatten()
    step = max(1, flat.numel() // max_samples)
    return flat[::step][:max_samples].cpu().clone()


class ActivationRecorder:
    """Forward hooks on named modules; each records its output's statistics, and, through a
    tensor hook on that output, the statistics of the gradient that reaches it.

        with ActivationRecorder({"layer1": m1, ...}) as rec:
            loss = f(model(x)); loss.backward()
        rec.stats["layer1"].act_std, rec.stats["layer1"].grad_std

    A module that returns a tuple is recorded through its first element. Hooks are removed on exit.
    """

    def __init__(self, modules: Mapping[str, nn.Module], max_samples: int = 4096):
        if not modules:
            raise ValueError("ActivationRecorder needs at least one named module to watch.")
        self.modules = dict(modules)
        self.max_samples = max_samples
        self.stats: dict[str, LayerStats] = {}
        self._handles: list = []

    def _forward_hook(self, name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            x = _statistics_dtype(out)
            self.stats[name] = LayerStats(name, float(x.std()), float(x.abs().mean()),
                                          _sample(x, self.max_samples))
            if out.requires_grad:
                def grad_hook(grad, name=name):
                    g = _statistics_dtype(grad)
                    self.stats[name].grad_std = float(g.std())
                    self.stats[name].grad_sample = _sample(g, self.max_samples)
                out.register_hook(grad_hook)
        return hook

    def __enter__(self) -> ActivationRecorder:
        self._handles = [m.register_forward_hook(self._forward_hook(n))
                         for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def column(self, key: str) -> list[float]:
        """The value of ``key`` (e.g. ``act_std``) for each module, in the order given."""
        return [getattr(self.stats[n], key) for n in self.modules]


def probe(model: nn.Module, modules: Mapping[str, nn.Module], inputs: torch.Tensor,
          loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, *, seed: int = 0,
          max_samples: int = 4096) -> dict[str, LayerStats]:
    """One forward and backward pass of ``model(inputs)`` with :class:`ActivationRecorder` on
    ``modules``; returns the per-layer stats and leaves every ``.grad`` as it found it.

    ``loss_fn(output)`` gives the scalar to differentiate. Without it the output receives a
    gradient of i.i.d. N(0, 1) entries (drawn from ``seed``): a unit-size signal at the top, so
    the gradient stds show only what the layers below do to it.
    """
    saved = {p: p.grad for p in model.parameters()}
    for p in saved:
        p.grad = None
    try:
        with ActivationRecorder(modules, max_samples) as rec:
            out = model(inputs)
            out = out[0] if isinstance(out, tuple) else out
            if loss_fn is not None:
                loss_fn(out).backward()
            elif out.requires_grad:
                g = torch.Generator(device="cpu").manual_seed(seed)
                out.backward(torch.randn(out.shape, generator=g).to(out.device, out.dtype))
    finally:
        for p, grad in saved.items():
            p.grad = grad
    return rec.stats


def initial_loss_expansion(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The mean cross-entropy of small logits, expanded to second order, term by term.

    For one position with logits z (..., V), their mean m and spread s over the V classes, and the
    target y, the cross-entropy is

        logsumexp(z) - z_y = ln V + s^2 / 2 + (m - z_y) + r,

    (log-sum-exp expanded around equal logits: ln V + m + log mean exp(z - m), and
    log mean exp(u) = mean(u^2) / 2 + mean(u^3) / 6 + ... for centred u). Returns the mean over
    positions of each term: ``ln_v``, ``spread`` (s^2 / 2), ``target`` (m - z_y: near zero unless
    the logits already favour the targets), ``predicted`` (their sum) and ``remainder_bound``,
    twice the mean third-order term mean(|u|^3) / 6, which bounds |r| while the logits are small
    (|u| well under 1). ``logits`` (B, T, V) or (N, V), ``targets`` of the leading shape."""
    if logits.dim() < 2 or logits.shape[-1] < 2 or targets.shape != logits.shape[:-1]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: "
                         "expected (..., V) with V >= 2 and targets of shape (...).")
    if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < logits.shape[-1]:
        raise ValueError(f"targets must be class indices in [0, {logits.shape[-1]}); got values "
                         f"from {int(targets.min())} to {int(targets.max())} (an objective's "
                         "ignored positions, -100, have no expansion: keep only scored ones).")
    z = logits.detach().double()  # (..., V)
    u = z - z.mean(-1, keepdim=True)  # (..., V): centred logits
    target = (-u.gather(-1, targets[..., None]).squeeze(-1)).mean()  # mean of m - z_y
    spread = (u.pow(2).mean(-1) / 2).mean()  # mean of s^2 / 2
    third = (u.abs().pow(3).mean(-1) / 6).mean()
    ln_v = math.log(logits.shape[-1])
    return {"ln_v": ln_v, "spread": float(spread), "target": float(target),
            "predicted": ln_v + float(spread) + float(target), "remainder_bound": 2 * float(third)}


def named_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's parameters with at least 2 dimensions (the matrices), by name, tied ones once."""
    out, seen = {}, set()
    for name, p in model.named_parameters():
        if p.dim() >= 2 and id(p) not in seen:
            seen.add(id(p))
            out[name] = p
    return out


def update_to_data_ratio(before: torch.Tensor, after: torch.Tensor) -> float:
    """||after - before|| / ||before|| (Frobenius norms); inf when ``before`` is all zeros."""
    if before.shape != after.shape:
        raise ValueError(f"before {tuple(before.shape)} and after {tuple(after.shape)} must be the "
                         "same parameter at two moments, with the same shape.")
    before, after = before.detach().float(), after.detach().float().to(before.device)
    denom = float(before.norm())
    delta = float((after - before).norm())
    return delta / denom if denom > 0 else float("inf")


class UpdateRatioTracker:
    """A ``train(..., callback=tracker)`` callback: after every optimizer step it records
    ||theta_t - theta_{t-1}|| / ||theta_{t-1}|| for each watched parameter, from a copy kept
    since the previous step (the first from the moment the tracker was made).

    ``tracker.rows``: one dict per step, ``{"step": t, name: ratio, ...}``. The ratios stay on the
    parameters' device until ``rows`` is read, and are then read back all at once: a step costs
    a few kernels and no wait for the device.
    """

    def __init__(self, params: Mapping[str, torch.Tensor]):
        if not params:
            raise ValueError("UpdateRatioTracker needs at least one named parameter to watch.")
        self.params = dict(params)
        self._previous = [p.detach().float().clone() for p in self.params.values()]
        self._steps: list[int] = []
        self._pending: list[torch.Tensor] = []  # one (n_params,) tensor of ratios per step
        self._rows: list[dict] = []

    @torch.no_grad()
    def __call__(self, row: dict | None = None) -> None:
        self._steps.append((row or {}).get("step", len(self._steps) + 1))
        now = [p.detach().float() for p in self.params.values()]
        delta = torch.stack(torch._foreach_norm(torch._foreach_sub(now, self._previous)))  # (n,)
        size = torch.stack(torch._foreach_norm(self._previous))  # (n,)
        self._pending.append(torch.where(size > 0, delta / size, torch.inf))  # (n,)
        torch._foreach_copy_(self._previous, now)

    @property
    def rows(self) -> list[dict]:
        if self._pending:
            values = torch.stack(self._pending).tolist()  # (steps, n_params): one read-back
            steps = self._steps[len(self._rows) :]
            self._rows += [{"step": step, **dict(zip(self.params, ratios, strict=True))}
                           for step, ratios in zip(steps, values, strict=True)]
            self._pending = []
        return self._rows

    def series(self, name: str) -> tuple[list[int], list[float]]:
        return [r["step"] for r in self.rows], [r[name] for r in self.rows]


class TrainingMonitor:
    """One callback for :func:`lmlab.train` doing both: the update-to-data ratios after every
    step, and, at the steps in ``probe_steps`` (0 = before training, taken at construction), a
    :func:`probe` of ``modules`` on a fixed batch ``(x, y)`` with ``loss_fn(output, y)``."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module],
                 params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 probe_steps: tuple[int, ...] = (0,)):
        self.model, self.modules, self.x, self.y, self.loss_fn = model, modules, x, y, loss_fn
        self.probe_steps = set(probe_steps)
        self.ratios = UpdateRatioTracker(params)
        self.probes: dict[int, dict[str, LayerStats]] = {}
        if 0 in self.probe_steps:
            self._probe(0)

    def _probe(self, step: int) -> None:
        device = next(self.model.parameters()).device
        x, y = self.x.to(device), self.y.to(device)
        self.probes[step] = probe(self.model, self.modules, x, lambda out: self.loss_fn(out, y))

    def __call__(self, row: dict) -> None:
        self.ratios(row)
        if row["step"] in self.probe_steps:
            self._probe(row["step"])


def transformer_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The residual stream of an :class:`lmlab.Transformer` to watch: the embedding sum
    (``drop``, as h_0) and each block's output h_l, named ``h0`` .. ``hL``."""
    layers = {"h0": model.drop}
    for i, block in enumerate(model.blocks):
        layers[f"h{i + 1}"] = block
    return layers


def stack_layers(stack: nn.Module) -> dict[str, nn.Module]:
    """The post-nonlinearity output of each layer of a :class:`lmlab.init.DeepStack`."""
    return {f"layer{i + 1}": act for i, act in enumerate(stack.acts)}

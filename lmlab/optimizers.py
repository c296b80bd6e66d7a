"""Optimizers written out for teaching: SGD (plain, momentum, Nesterov), Adam, AdamW and Muon.

Each is a ``torch.optim.Optimizer`` whose ``step`` spells the update out one parameter at a time,
in the same conventions as ``torch.optim`` (``tests/test_optim.py`` checks them against it, step by
step, on a real Transformer). Notation: theta a parameter, g its gradient, lr the learning rate,
t the 1-based step count, wd the weight decay.

Momentum conventions differ between texts. PyTorch (and this module) accumulate
``b <- mu b + g; theta <- theta - lr b``; many texts use the exponential moving average
``m <- beta m + (1 - beta) g; theta <- theta - alpha m``. The two give the same iterates when
``lr = alpha (1 - beta)``: with mu = 0.9 a learning rate tuned for one is ten times off for the
other.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable

import torch

# Quintic Newton-Schulz coefficients of Muon (Jordan et al. 2024), the ones torch.optim.Muon uses:
# p(s) = a s + b s^3 + c s^5, a large for a steep slope at 0 (small singular values grow fast).
NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315
NS_COEFFICIENTS = (NS_A, NS_B, NS_C)


def _check(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (isinstance(value, (int, float)) and low <= value < high):
        raise ValueError(f"{name}={value!r} is invalid: expected a number in [{low}, {high}).")


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum, PyTorch's convention:

        g <- g + wd theta                         (L2 penalty through the gradient)
        b <- g at the first step, else mu b + g   (momentum buffer; skipped when mu = 0)
        d <- g + mu b if nesterov else b          (d = g when mu = 0)
        theta <- theta - lr d
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("weight_decay", weight_decay, 0.0)
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0 (e.g. momentum=0.9).")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad  # g + wd theta
                if mu:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.clone()
                    else:
                        state["momentum_buffer"].mul_(mu).add_(g)
                    b = state["momentum_buffer"]
                    g = g.add(b, alpha=mu) if group["nesterov"] else b  # g + mu b or b
                p.add_(g, alpha=-lr)
        return loss


class Adam(torch.optim.Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; ``decoupled=True`` makes it AdamW.

        g <- g + wd theta                      (Adam: L2 penalty through the gradient)
        theta <- theta (1 - lr wd)             (AdamW instead: decoupled decay, Loshchilov & Hutter)
        m <- beta1 m + (1 - beta1) g
        v <- beta2 v + (1 - beta2) g^2
        m_hat <- m / (1 - beta1^t);  v_hat <- v / (1 - beta2^t)
        theta <- theta - lr m_hat / (sqrt(v_hat) + eps)

    eps is added to sqrt(v_hat), not to sqrt(v): the paper's "efficient" form
    lr sqrt(1 - beta2^t) / (1 - beta1^t) m / (sqrt(v) + eps) is the same only up to eps.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        _check("lr", lr, 0.0)
        _check("eps", eps, 0.0)
        _check("weight_decay", weight_decay, 0.0)
        if len(betas) != 2:
            raise ValueError(f"betas={betas!r} is invalid: expected a pair (beta1, beta2).")
        _check("betas[0]", betas[0], 0.0, 1.0)
        _check("betas[1]", betas[1], 0.0, 1.0)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay, "decoupled": decoupled})

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    adam_update(p, p.grad, self.state[p], group)
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay: ``Adam(..., decoupled=True)``; wd 0.01 by default."""

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True)


def adam_update(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
    """One Adam(W) step on ``p`` in place (the formula of :class:`Adam`); ``state``: t, m, v."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)  # m
        state["exp_avg_sq"] = torch.zeros_like(p)  # v
    state["step"] += 1
    t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
    if wd and group.get("decoupled", True):
        p.mul_(1 - lr * wd)
    elif wd:
        grad = grad.add(p, alpha=wd)  # g + wd theta
    m.lerp_(grad, 1 - beta1)  # m + (1 - beta1)(g - m) = beta1 m + (1 - beta1) g
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = v.sqrt() / (1 - beta2**t) ** 0.5 + eps  # sqrt(v_hat) + eps
    p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))  # theta - lr m_hat / (sqrt(v_hat) + eps)


# oneDNN instruction-set limits (ONEDNN_MAX_CPU_ISA) under which it has no bf16 matrix instructions
_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                      "AVX512_CORE_VNNI"}


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX instructions)
    and oneDNN, PyTorch's CPU matrix library, is allowed to use them."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() in _ISAS_WITHOUT_BF16:
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def newton_schulz_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype :func:`newton_schulz` runs in on ``device``: the faster one that is accurate
    enough. bfloat16 on CUDA and on CPUs with bf16 matrix instructions, float32 elsewhere.

    bf16 (8 significant bits) is accurate enough for an orthogonalization: the iteration only has
    to bring singular values near 1, and each step works on the last one's rounded result (it is
    what ``torch.optim.Muon`` always uses). It is fast only where the hardware multiplies bf16:
    GPU tensor cores, and CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates it. Measured
    for one 512 x 128 Newton-Schulz, one thread, torch 2.13, a 2-core AMD EPYC VM
    (benchmarks/RESULTS.md): with AVX512-BF16, bf16 0.9-1.5 ms, fp32 2.1-2.9 ms; the same CPU
    limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, like most laptops), bf16 81-238 ms, fp32
    2.6-3.4 ms. Apple's MPS is not measured: fp32 there.
    A limit set in ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16 counts as no bf16 instructions.
    """
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_matmul()):
        return torch.bfloat16
    return torch.float32


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalize a matrix: G = U S V^T -> about U V^T (singular values to ~1).

        X <- G / max(||G||_F, eps)         transposed so that rows <= columns
        repeat ``steps`` times:
            A <- X X^T
            P <- a I + b A + c A A
            X <- P X                       (= a X + b (X X^T) X + c (X X^T)^2 X)

    On G = U S V^T one step maps X = U S V^T to U p(S) V^T with the odd quintic
    p(s) = a s + b s^3 + c s^5: it acts on each singular value alone. Written as P X, the
    element-wise work is on the small (rows, rows) matrices only. With (a, b, c) from
    Jordan et al. (2024) it pushes every s in (0, 1] into roughly [0.7, 1.2] in five steps.

    ``g``: (rows, cols), or a stack (n, rows, cols) of same-shape matrices orthogonalized at once
    (batched matrix products). ``dtype``: the precision of the iteration; None picks
    :func:`newton_schulz_dtype` for ``g``'s device (bf16 on CUDA and on CPUs with bf16 matrix
    instructions, fp32 elsewhere). The result is in that dtype.
    """
    if g.dim() not in (2, 3):
        raise ValueError("newton_schulz needs a matrix (rows, cols) or a stack of them "
                         f"(n, rows, cols); got a tensor of shape {tuple(g.shape)}.")
    a, b, c = coefficients
    x = g.to(dtype or newton_schulz_dtype(g.device))
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT  # (..., r, cols) with r <= cols: the Gram matrix below is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # ||X||_2 <= ||X||_F = 1
    eye = torch.eye(x.size(-2), dtype=x.dtype, device=x.device)  # (r, r)
    for _ in range(steps):
        gram = x @ x.mT  # A = X X^T, (..., r, r)
        poly = a * eye + b * gram + c * (gram @ gram)  # P = a I + b A + c A A, (..., r, r)
        x = poly @ x  # P X = a X + b A X + c A A X, (..., r, cols)
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) for hidden matrices, AdamW for everything else.

    Groups with ``use_muon=True`` (2-D weights of hidden layers) take, with mu = ``momentum``,

        b <- mu b + (1 - mu) g;   u <- (1 - mu) g + mu b   (Nesterov)   or   u <- b
        O <- newton_schulz(u)                                (~ the orthogonal factor U V^T)
        theta <- theta (1 - lr wd) - lr * 0.2 sqrt(max(rows, cols)) O

    The factor 0.2 sqrt(max(rows, cols)) gives the update the RMS of a typical AdamW update
    (Liu et al. 2025), so one learning rate and weight decay serve both kinds of group; this is
    ``torch.optim.Muon(adjust_lr_fn="match_rms_adamw")``. The other groups (embeddings, the tied
    output layer, norms, biases) take the :class:`AdamW` step with ``betas`` and ``eps``.

    ``ns_dtype``: the dtype of the Newton-Schulz iteration; None (default) picks
    :func:`newton_schulz_dtype` per parameter device: bf16 on CUDA and on CPUs with bf16
    matrix instructions, fp32 elsewhere; ``torch.optim.Muon`` always uses bf16.
    ``batched=True`` orthogonalizes the matrices of one shape together (one stacked, batched
    Newton-Schulz per shape instead of one per matrix; equal up to rounding), ``False`` one at a
    time; None (default) batches where the iteration runs in bf16. On a 2-core CPU with bf16
    instructions, for the 16 matrices of the CPU recipe, batching made the optimizer step 10-30%
    faster in bf16 and 5-20% slower in fp32 (benchmarks/RESULTS.md). On a GPU (bf16) it saves
    kernel launches; not measured yet.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, ns_dtype: torch.dtype | None = None,
                 batched: bool | None = None):
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("weight_decay", weight_decay, 0.0)
        if ns_dtype is not None and not (isinstance(ns_dtype, torch.dtype)
                                         and ns_dtype.is_floating_point):
            raise ValueError(f"ns_dtype={ns_dtype!r} is invalid: expected None (by device) or a "
                             "floating dtype such as torch.float32 or torch.bfloat16.")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "ns_steps": ns_steps, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay, "use_muon": False})
        self.ns_dtype, self.batched = ns_dtype, batched
        for group in self.param_groups:
            bad = [tuple(p.shape) for p in group["params"] if group["use_muon"] and p.dim() != 2]
            if bad:
                raise ValueError(f"use_muon=True groups must hold matrices only; got shapes {bad}: "
                                 "put vectors and embeddings in a group with use_muon=False.")

    def _momentum(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """b <- mu b + (1 - mu) g; returns u, the matrix to orthogonalize."""
        mu, state = group["momentum"], self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        b = state["momentum_buffer"]
        b.lerp_(p.grad, 1 - mu)
        return p.grad.lerp(b, mu) if group["nesterov"] else b

    def _orthogonalize(self, updates: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
        """newton_schulz of each update: one stacked call per (shape, device) where batched."""
        out: list[torch.Tensor | None] = [None] * len(updates)
        by_shape: dict[tuple, list[int]] = {}
        for i, u in enumerate(updates):
            by_shape.setdefault((tuple(u.shape), u.device), []).append(i)
        for (_, device), indices in by_shape.items():
            dtype = self.ns_dtype or newton_schulz_dtype(device)
            if self.batched or (self.batched is None and dtype == torch.bfloat16):
                stacked = torch.stack([updates[i] for i in indices])  # (n, rows, cols)
                for i, o in zip(indices, newton_schulz(stacked, steps, dtype=dtype), strict=True):
                    out[i] = o
            else:
                for i in indices:
                    out[i] = newton_schulz(updates[i], steps, dtype=dtype)
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not group["use_muon"]:
                for p in params:
                    adam_update(p, p.grad, self.state[p], {**group, "decoupled": True})
                continue
            lr, wd = group["lr"], group["weight_decay"]
            updates = [self._momentum(p, group) for p in params]
            for p, o in zip(params, self._orthogonalize(updates, group["ns_steps"]), strict=True):
                p.mul_(1 - lr * wd)
                p.add_(o.to(p.dtype), alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
        return loss

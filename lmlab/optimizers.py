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

import math
from collections.abc import Iterable

import torch

# Quintic Newton-Schulz coefficients of Muon (Jordan et al. 2024), the ones torch.optim.Muon uses.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


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


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> torch.Tensor:
    """Approximately orthogonalize a matrix: G = U S V^T -> about U V^T (singular values to ~1).

        X <- G / max(||G||_F, eps)         in bfloat16, transposed so that rows <= columns
        repeat ``steps`` times:  A <- X X^T;  X <- a X + (b A + c A A) X

    The odd polynomial p(s) = a s + b s^3 + c s^5 acts on each singular value; with (a, b, c) from
    Jordan et al. (2024) it pushes every s in (0, 1] into roughly [0.7, 1.2] in five steps.
    """
    if g.dim() != 2:
        raise ValueError(f"newton_schulz needs a matrix; got a tensor of shape {tuple(g.shape)}.")
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # (rows <= cols)
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T  # (r, r)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A A, (r, r)
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A A) X, (r, cols)
    return x.T if tall else x


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
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        _check("lr", lr, 0.0)
        _check("momentum", momentum, 0.0, 1.0)
        _check("weight_decay", weight_decay, 0.0)
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "ns_steps": ns_steps, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay, "use_muon": False})
        for group in self.param_groups:
            bad = [tuple(p.shape) for p in group["params"] if group["use_muon"] and p.dim() != 2]
            if bad:
                raise ValueError(f"use_muon=True groups must hold matrices only; got shapes {bad}: "
                                 "put vectors and embeddings in a group with use_muon=False.")

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not group["use_muon"]:
                    adam_update(p, p.grad, self.state[p], {**group, "decoupled": True})
                    continue
                lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                b = state["momentum_buffer"]
                b.lerp_(p.grad, 1 - mu)
                u = p.grad.lerp(b, mu) if group["nesterov"] else b
                o = newton_schulz(u, group["ns_steps"])  # (rows, cols), bf16
                p.mul_(1 - lr * wd)
                p.add_(o.to(p.dtype), alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
        return loss

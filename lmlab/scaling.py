"""Scaling laws in miniature: fit L(x) = E + A / x^alpha, and find compute-optimal model sizes.

Kaplan et al. (2020) and Hoffmann et al. (2022) found that the loss of a language model falls as
a power law in parameters N and training tokens D towards an irreducible loss E:

    L(N) = E + A / N^alpha            (data not limiting)
    L(D) = E + B / D^beta             (model not limiting)

:func:`fit_power_law` fits (E, A, alpha) by least squares on L with Levenberg-Marquardt:
Gauss-Newton steps (J^T J + lambda diag(J^T J)) delta = -J^T r on the parameters
(E, log A, alpha), where r_i = E + exp(log A - alpha log x_i) - L_i, with lambda raised after a
step that does not lower sum r^2 and lowered after one that does.

Training compute is C = 6 N D FLOPs (forward + backward, Kaplan et al. 2020).
:func:`compute_optimal` reads, for each budget C, the loss every model reaches with D = C / (6 N)
tokens off its learning curve and keeps the best N: the compute-optimal (N, D) and tokens per
parameter D / N, which Hoffmann et al. (2022) put at about 20.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PowerLawFit:
    """L(x) = E + A / x^alpha, fitted; ``rmse`` over the points it was fitted on."""

    E: float
    A: float
    alpha: float
    rmse: float
    iterations: int

    def __call__(self, x) -> np.ndarray:
        return self.E + self.A * np.asarray(x, dtype=float) ** (-self.alpha)


def _residuals(theta: np.ndarray, log_x: np.ndarray, y: np.ndarray) -> np.ndarray:
    e, log_a, alpha = theta
    return e + np.exp(log_a - alpha * log_x) - y


def _jacobian(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    _, log_a, alpha = theta
    term = np.exp(log_a - alpha * log_x)  # A x^-alpha
    return np.stack([np.ones_like(log_x), term, -log_x * term], axis=1)  # (n, 3)


def fit_power_law(x: Sequence[float], y: Sequence[float], max_iter: int = 500,
                  tol: float = 1e-12) -> PowerLawFit:
    """Least-squares fit of y = E + A x^-alpha (Levenberg-Marquardt; see the module docstring).

    Starts from E just below min(y) and a straight-line fit of log(y - E) on log x.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"need at least 3 (x, y) pairs of equal length to fit 3 parameters; "
                         f"got x of shape {x.shape} and y of shape {y.shape}.")
    if (x <= 0).any() or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x must be positive and x, y finite (a NaN loss is a diverged run: "
                         "leave it out of the fit).")
    log_x = np.log(x)
    e0 = y.min() - 0.1 * (y.max() - y.min()) - 1e-3
    slope, intercept = np.polyfit(log_x, np.log(y - e0), 1)
    theta = np.array([e0, intercept, max(-slope, 1e-3)])
    cost = float(np.sum(_residuals(theta, log_x, y) ** 2))
    damping = 1e-3
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (reported after the loop)
        r = _residuals(theta, log_x, y)
        j = _jacobian(theta, log_x)
        jtj = j.T @ j
        try:
            step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -j.T @ r)
        except np.linalg.LinAlgError:  # a degenerate direction: damp harder and try again
            step = None
        if step is not None:
            candidate = theta + step
            with np.errstate(over="ignore", invalid="ignore"):
                new_cost = float(np.sum(_residuals(candidate, log_x, y) ** 2))
        if step is not None and np.isfinite(new_cost) and new_cost < cost:
            converged = cost - new_cost <= tol * max(cost, 1e-30)
            theta, cost, damping = candidate, new_cost, damping / 3
            if converged:
                break
        else:
            damping *= 4
            if damping > 1e12:
                break
    e, log_a, alpha = theta
    return PowerLawFit(float(e), float(math.exp(log_a)), float(alpha),
                       float(math.sqrt(cost / len(x))), iterations)


def training_flops(n_params: float, tokens: float) -> float:
    """C = 6 N D: 2 N FLOPs per token forward, 4 N backward (Kaplan et al. 2020)."""
    return 6.0 * n_params * tokens


def loss_at_tokens(tokens: Sequence[float], losses: Sequence[float], d: float) -> float | None:
    """A learning curve's loss at ``d`` tokens, interpolated linearly in log(tokens); None outside
    the curve's range."""
    t, loss = np.asarray(tokens, dtype=float), np.asarray(losses, dtype=float)
    if d < t[0] or d > t[-1]:
        return None
    return float(np.interp(math.log(d), np.log(t), loss))


def compute_optimal(curves: dict[float, tuple[Sequence[float], Sequence[float]]],
                    budgets: Sequence[float]) -> list[dict]:
    """For each compute budget C: the model size N (a key of ``curves``: N -> (tokens, losses))
    with the lowest loss at D = C / (6 N) tokens, and that D, D / N and the loss. Budgets no
    model's curve reaches are left out."""
    rows = []
    for c in budgets:
        best = None
        for n, (tokens, losses) in curves.items():
            d = c / (6.0 * n)
            loss = loss_at_tokens(tokens, losses, d)
            if loss is not None and (best is None or loss < best["loss"]):
                best = {"compute": c, "n_params": n, "tokens": d, "tokens_per_param": d / n,
                        "loss": loss}
        if best is not None:
            rows.append(best)
    return rows


def non_embedding_parameters(model) -> int:
    """N as Kaplan et al. (2020) count it: all parameters except the token and position
    embeddings (the tied output matrix is the token embedding, so it is left out too)."""
    n = sum(p.numel() for p in model.parameters())
    n -= model.tok_emb.weight.numel()
    if model.pos_emb is not None:
        n -= model.pos_emb.weight.numel()
    return n

"""Two-dimensional loss surfaces on which optimizer trajectories can be drawn and compared.

    ill_conditioned_quadratic:  f(w) = 1/2 (h_1 u^2 + h_2 v^2),  (u, v) = R(angle) w,
                                h = (1, condition): curvatures differ ``condition``-fold
    rosenbrock:                 f(x, y) = (a - x)^2 + b (y - x^2)^2,  minimum at (a, a^2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Surface:
    """A function of a 2-vector, its minimizer, a starting point and a plotting window."""

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    minimum: tuple[float, float]
    start: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.f(w)

    def grid(self, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X, Y, Z arrays of shape (n, n) over the window, for contour plots."""
        xs = torch.linspace(*self.xlim, n, dtype=torch.float64)
        ys = torch.linspace(*self.ylim, n, dtype=torch.float64)
        x, y = torch.meshgrid(xs, ys, indexing="xy")  # (n, n) each
        z = self.f(torch.stack([x, y]))  # f broadcasts over trailing dims: (n, n)
        return x.numpy(), y.numpy(), z.numpy()


def ill_conditioned_quadratic(condition: float = 25.0, angle: float = 0.0,
                              start: tuple[float, float] = (-4.0, 2.0)) -> Surface:
    """f(w) = 1/2 (u^2 + condition v^2) with (u, v) the axes rotated by ``angle`` radians."""
    if condition < 1:
        raise ValueError(f"condition={condition} is invalid: expected a number >= 1.")
    c, s = math.cos(angle), math.sin(angle)

    def f(w: torch.Tensor) -> torch.Tensor:
        u = c * w[0] + s * w[1]
        v = -s * w[0] + c * w[1]
        return 0.5 * (u**2 + condition * v**2)

    return Surface(f"quadratic (condition {condition:g})", f, (0.0, 0.0), start,
                   (-4.5, 4.5), (-2.5, 2.5))


def rosenbrock(a: float = 1.0, b: float = 100.0,
               start: tuple[float, float] = (-1.5, 2.0)) -> Surface:
    """f(x, y) = (a - x)^2 + b (y - x^2)^2 (Rosenbrock 1960): a curved, flat-bottomed valley."""

    def f(w: torch.Tensor) -> torch.Tensor:
        return (a - w[0]) ** 2 + b * (w[1] - w[0] ** 2) ** 2

    return Surface("Rosenbrock", f, (a, a * a), start, (-2.0, 2.0), (-1.0, 3.0))


def trajectory(surface: Surface,
               make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
               steps: int = 100, start: tuple[float, float] | None = None) -> np.ndarray:
    """Points visited by ``make_optimizer([w])`` minimizing ``surface`` from ``start``:
    an array of shape (steps + 1, 2), row 0 the start (float64 throughout)."""
    if steps < 1:
        raise ValueError(f"steps={steps} is invalid: expected an integer >= 1.")
    w = torch.tensor(start or surface.start, dtype=torch.float64, requires_grad=True)  # (2,)
    optimizer = make_optimizer([w])
    points = [w.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        surface(w).backward()
        optimizer.step()
        points.append(w.detach().clone())
    return torch.stack(points).numpy()  # (steps + 1, 2)

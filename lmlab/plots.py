"""Plots drawn onto a given matplotlib Axes: loss curves, attention maps, per-layer statistics.

Functions here draw and return nothing else; who owns the figure (a notebook cell, a widget's
persistent figure) is the caller's business. They take histories (lists of row dicts), Runs or
experiment Results alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .history import column


def _column(source, key: str) -> tuple[list, list]:
    """(steps, values) of ``key`` from history rows, or from a Run / Result (its ``.history``)."""
    return column(getattr(source, "history", source), key)


def loss_curves(ax, runs: Mapping[str, object], metric: str = "val_loss", *, train: bool = False,
                smooth: int = 1, title: str | None = None, ylim: tuple | None = None) -> None:
    """One line per run: ``metric`` against step (and, with ``train``, the per-step training loss,
    thin and averaged over a moving window of ``smooth`` steps, in the same colour)."""
    for i, (label, run) in enumerate(runs.items()):
        color = f"C{i % 10}"
        steps, values = _column(run, metric)
        ax.plot(steps, values, color=color, marker="o" if len(steps) < 30 else None,
                markersize=3, label=f"{label}")
        if train:
            s, v = _column(run, "train_loss")
            if smooth > 1 and len(v) >= smooth:
                v = np.convolve(v, np.ones(smooth) / smooth, mode="valid")
                s = s[smooth - 1:]
            ax.plot(s, v, color=color, alpha=0.35, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " "))
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    if runs:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def attention_map(
    ax, weights, tokens: Sequence[str] | None = None, title: str | None = None
) -> None:
    """Heat map of one (T_q, T_k) attention matrix; rows are queries, columns keys."""
    w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights)
    ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(w.max())), aspect="auto",
              interpolation="nearest")
    if tokens is not None:
        labels = [repr(t)[1:-1] if t.strip() == "" else t for t in tokens]
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if title:
        ax.set_title(title)


def per_layer(ax, values: Mapping[str, Sequence[float]], ylabel: str, *, logy: bool = True,
              title: str | None = None) -> None:
    """One line per series of per-layer values (e.g. activation std against depth)."""
    for label, v in values.items():
        ax.plot(range(1, len(v) + 1), v, marker="o", markersize=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

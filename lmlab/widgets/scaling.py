"""Chapter 8's explorers: the fitted scaling law, and loss against sparsity.

Thin wrappers: the law is refitted with :func:`lmlab.scaling.fit_power_law` on the points picked;
pruned models come from :func:`lmlab.compress.pruned_copy` and are scored with
:func:`lmlab.train.evaluate` (each sparsity once per kind, then remembered).
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as W
import numpy as np
from torch import nn

from ..compress import PRUNING, pruned_copy
from ..evaluation import evaluate
from ..scaling import fit_power_law, loss_at_tokens
from . import Explorer


def scaling_law_explorer(n_params: Sequence[float],
                         curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Explorer:
    """Models of ``n_params`` parameters with learning curves ``curves`` (tokens, val losses);
    pick the training tokens D at which each model's loss is read and how many of the smallest
    models the law L(N) = E + A / N^alpha is fitted on; the rest show how far it extrapolates."""
    if len(n_params) != len(curves) or len(n_params) < 3:
        raise ValueError(f"need one curve per model and at least 3 models; got {len(n_params)} "
                         f"sizes and {len(curves)} curves.")
    order = np.argsort(n_params)
    n = np.asarray(n_params, dtype=float)[order]
    curves = [curves[i] for i in order]
    common = sorted(set.intersection(*(set(tokens) for tokens, _ in curves)))
    if not common:
        raise ValueError("the learning curves share no evaluation point (tokens): train them "
                         "with the same batch size and eval_every.")
    controls = {
        "tokens": W.SelectionSlider(options=[(f"{t:,.0f}", t) for t in common], value=common[-1],
                                    description="tokens D", continuous_update=False,
                                    style={"description_width": "initial"}),
        "fit_on": W.IntSlider(value=len(n), min=3, max=len(n), description="fit on smallest",
                              continuous_update=False, style={"description_width": "initial"}),
    }

    def draw(figure, progress, tokens, fit_on):
        loss = np.array([loss_at_tokens(t, v, tokens) for t, v in curves])
        fit = fit_power_law(n[:fit_on], loss[:fit_on])
        grid = np.logspace(np.log10(n[0]) - 0.1, np.log10(n[-1]) + 0.1, 100)
        ax = figure.add_subplot()
        ax.semilogx(n[:fit_on], loss[:fit_on], "o", color="C0", label="fitted on")
        if fit_on < len(n):
            ax.semilogx(n[fit_on:], loss[fit_on:], "o", mfc="none", color="C3",
                        label="held out")
        ax.semilogx(grid, fit(grid), color="C0", alpha=0.7,
                    label=f"E + A/N^alpha: E={fit.E:.2f}, A={fit.A:.3g}, alpha={fit.alpha:.2f}")
        ax.axhline(fit.E, color="0.6", linestyle=":", linewidth=1)
        held = loss[fit_on:] - fit(n[fit_on:])
        extra = f"; held-out error up to {np.abs(held).max():.3f}" if len(held) else ""
        ax.set(xlabel="non-embedding parameters N", ylabel="validation loss (nats/char)",
               title=f"L(N) at D = {tokens:,.0f} tokens: fit rmse {fit.rmse:.3f}{extra}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    return Explorer(controls, draw, title="Scaling-law explorer: L(N) = E + A / N^alpha",
                    figsize=(7.5, 4.0))


def pruning_explorer(model: nn.Module, batches, sparsities: Sequence[float] = (0.0, 0.25, 0.5,
                                                                                0.75, 0.9),
                     references: dict[str, float] | None = None) -> Explorer:
    """Pick the pruning kind and a sparsity; draws validation loss against sparsity for that kind
    (on ``batches``), marks the sparsity picked, and draws ``references`` (name -> loss, e.g.
    the int8 models) as horizontal lines."""
    sparsities = sorted(float(s) for s in sparsities)
    scores: dict[tuple[str, float], float] = {}
    controls = {
        "kind": W.ToggleButtons(options=list(PRUNING), value=PRUNING[0], description="prune"),
        "sparsity": W.SelectionSlider(options=[(f"{s:.0%}", s) for s in sparsities],
                                      value=sparsities[len(sparsities) // 2],
                                      description="sparsity", continuous_update=False),
    }

    def draw(figure, progress, kind, sparsity):
        for i, s in enumerate(sparsities):
            if (kind, s) not in scores:
                progress(i / len(sparsities), f"pruning {kind} to {s:.0%}")
                scores[kind, s] = evaluate(pruned_copy(model, s, kind)[0], batches)
        ax = figure.add_subplot()
        ax.plot(sparsities, [scores[kind, s] for s in sparsities], marker="o", color="C0",
                label=f"{kind} magnitude pruning")
        ax.plot([sparsity], [scores[kind, sparsity]], "o", markersize=12, mfc="none", color="C3",
                label=f"{sparsity:.0%}: loss {scores[kind, sparsity]:.3f}")
        for i, (name, loss) in enumerate((references or {}).items()):
            ax.axhline(loss, color=f"C{i + 2}", linestyle="--", linewidth=1, label=name)
        ax.set(xlabel="sparsity of the block weights", ylabel="validation loss (nats/char)",
               title=f"{kind} pruning, no fine-tuning")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    return Explorer(controls, draw, title="Pruning explorer: loss against sparsity",
                    figsize=(7.5, 4.0))

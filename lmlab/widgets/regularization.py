"""Chapter 5's explorer: dropout, weight decay, label smoothing and data fraction against the
training and validation curves.

A thin wrapper: each setting is one :func:`lmlab.experiments.regularized_run` (read from the
disk cache when it was run before, trained live otherwise), drawn with
:func:`lmlab.plots.loss_curves`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import ModelConfig, TrainConfig
from ..data import Corpus
from ..experiments import regularized_run
from ..history import rows_with
from ..plots import loss_curves
from . import Explorer, History, live_callback, metric_line, value_slider


def regularization_explorer(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
                            *, dropouts: Sequence[float] = (0.0, 0.2, 0.4),
                            weight_decays: Sequence[float] = (0.0, 0.1, 1.0),
                            label_smoothings: Sequence[float] = (0.0, 0.1, 0.3),
                            data_fractions: Sequence[float] = (0.003, 0.01, 0.03),
                            defaults: dict | None = None, ylim: tuple | None = None) -> Explorer:
    """Sliders for dropout, weight decay, label smoothing and the fraction of the training text;
    draws the loss on fixed training batches and on validation batches against the step, marks
    the best validation loss and reports the final gap val - train. The validation curves of the
    reference setting (the defaults, dashed) and of the last settings tried (grey) stay drawn
    behind, on axes fixed by the first draw (or by ``ylim``)."""
    defaults = {"dropout": dropouts[0], "weight_decay": weight_decays[0],
                "label_smoothing": label_smoothings[0], "data_fraction": data_fractions[0],
                **(defaults or {})}
    controls = {
        "dropout": value_slider("dropout p", dropouts, defaults["dropout"]),
        "weight_decay": value_slider("weight decay", weight_decays, defaults["weight_decay"]),
        "label_smoothing": value_slider("label smoothing", label_smoothings,
                                   defaults["label_smoothing"]),
        "data_fraction": value_slider("data fraction", data_fractions, defaults["data_fraction"]),
    }
    steps = train_config.steps
    history = History(keep=3)

    def plot(figure, key, label, rows, partial=False):
        ax = figure.add_subplot()
        history.draw_behind(ax, key, metric_line("val_loss"))
        loss_curves(ax, {"validation": rows}, "val_loss", ylim=ylim)
        evals = rows_with(rows, "val_loss")
        train_losses = [r["eval_train_loss"] for r in evals]
        marker = "o" if len(evals) < 30 else None
        ax.plot([r["step"] for r in evals], train_losses, color="C1", marker=marker,
                markersize=3, label="training (fixed batches)")
        if evals:
            best = min(evals, key=lambda r: r["val_loss"])
            ax.axvline(best["step"], color="0.5", linestyle=":", linewidth=1,
                       label=f"best validation: {best['val_loss']:.3f} at step {best['step']}")
            gap = f"{evals[-1]['val_loss'] - train_losses[-1]:.3f}"
        else:
            gap = "(no evaluation yet)"
        ax.set_ylabel("loss (nats/char)")
        ax.set_title(f"{label}\n{'gap so far' if partial else 'final gap'} (val - train) = {gap}",
                     fontsize=9)
        ax.legend(fontsize=7)
        if partial:  # the whole run's x range from the first preview on
            ax.set_xlim(-0.05 * steps, 1.05 * steps)
        history.fix_limits(ax, "loss", ymax=math.log(model_config.vocab_size) + 1.0)

    def draw(figure, progress, dropout, weight_decay, label_smoothing, data_fraction):
        key = (dropout, weight_decay, label_smoothing, data_fraction)
        short = (f"p={dropout:g}, wd={weight_decay:g}, ls={label_smoothing:g}, "
                 f"data={data_fraction:g}")
        report = live_callback(
            progress, steps, lambda row: f"training live: step {row['step']} / {steps}",
            lambda fig, rows: plot(fig, key, f"{short} (training)", rows, partial=True))
        result = regularized_run(model_config, train_config, corpus, dropout=dropout,
                                 weight_decay=weight_decay, label_smoothing=label_smoothing,
                                 data_fraction=data_fraction, callback=report)
        history.record(key, short, result)
        plot(figure, key, result.label, result.history)

    return Explorer(controls, draw, title="Regularization explorer: train vs validation",
                    figsize=(7.5, 4.2), history=history)

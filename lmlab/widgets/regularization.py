"""Chapter 5's explorer: dropout, weight decay, label smoothing and data fraction against the
training and validation curves.

A thin wrapper: each setting is one :func:`lmlab.experiments.regularized_run` (read from the
disk cache when it was run before, trained live otherwise), drawn with
:func:`lmlab.plots.loss_curves`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ipywidgets as W

from ..config import ModelConfig, TrainConfig
from ..data import Corpus
from ..experiments import regularized_run
from ..plots import loss_curves
from . import Explorer, History, metric_line


def _slider(description: str, options: Sequence[float], value: float) -> W.SelectionSlider:
    options = [float(o) for o in options]
    if float(value) not in options:
        raise ValueError(f"{description} default {value!r} is not among the options {options}.")
    return W.SelectionSlider(options=[(f"{o:g}", o) for o in options], value=float(value),
                             description=description, continuous_update=False,
                             style={"description_width": "initial"})


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
        "dropout": _slider("dropout p", dropouts, defaults["dropout"]),
        "weight_decay": _slider("weight decay", weight_decays, defaults["weight_decay"]),
        "label_smoothing": _slider("label smoothing", label_smoothings,
                                   defaults["label_smoothing"]),
        "data_fraction": _slider("data fraction", data_fractions, defaults["data_fraction"]),
    }
    steps = train_config.steps
    history = History(keep=3)

    def draw(figure, progress, dropout, weight_decay, label_smoothing, data_fraction):
        def report(row):
            progress(row["step"] / steps, f"training live: step {row['step']} / {steps}")

        result = regularized_run(model_config, train_config, corpus, dropout=dropout,
                                 weight_decay=weight_decay, label_smoothing=label_smoothing,
                                 data_fraction=data_fraction, callback=report)
        key = (dropout, weight_decay, label_smoothing, data_fraction)
        history.record(key, (f"p={dropout:g}, wd={weight_decay:g}, ls={label_smoothing:g}, "
                             f"data={data_fraction:g}"), result)
        ax = figure.add_subplot()
        history.draw_behind(ax, key, metric_line("val_loss"))
        loss_curves(ax, {"validation": result}, "val_loss", ylim=ylim)
        train_steps, train_losses = result.column("eval_train_loss")
        marker = "o" if len(train_steps) < 30 else None
        ax.plot(train_steps, train_losses, color="C1", marker=marker, markersize=3,
                label="training (fixed batches)")
        steps_val, val = result.column("val_loss")
        best = min(range(len(val)), key=val.__getitem__)
        ax.axvline(steps_val[best], color="0.5", linestyle=":", linewidth=1,
                   label=f"best validation: {val[best]:.3f} at step {steps_val[best]}")
        ax.set_ylabel("loss (nats/char)")
        ax.set_title(f"{result.label}\nfinal gap (val - train) = {val[-1] - train_losses[-1]:.3f}",
                     fontsize=9)
        ax.legend(fontsize=7)
        history.fix_limits(ax, "loss", ymax=math.log(model_config.vocab_size) + 1.0)

    return Explorer(controls, draw, title="Regularization explorer: train vs validation",
                    figsize=(7.5, 4.2), history=history)

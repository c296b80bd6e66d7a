"""The quickstart's explorer: how the learning rate shapes the loss curve."""

from __future__ import annotations

import math

import ipywidgets as W

from ..config import ModelConfig, TrainConfig
from ..data import Corpus
from ..experiments import run_experiment
from ..plots import loss_curves
from . import Explorer, History, live_callback, metric_line


def learning_rate_explorer(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
                           learning_rates=(3e-4, 1e-3, 3e-3, 1e-2), default: float | None = None,
                           compare_to: float | None = None) -> Explorer:
    """Pick a peak learning rate; see its validation (and smoothed training) loss curve over the
    validation curves of a reference run at ``compare_to`` (dashed) and of the last learning rates
    tried (grey), on axes fixed by the first draw. Runs go through
    :func:`lmlab.experiments.run_experiment`, so each learning rate trains once and is read back
    from the disk cache afterwards."""
    learning_rates = tuple(learning_rates)
    default = learning_rates[1] if default is None else default
    if default not in learning_rates:
        raise ValueError(f"default={default} is not among learning_rates={learning_rates}.")
    compare_to = default if compare_to is None else compare_to
    lr = W.Dropdown(options=[(f"{v:g}", v) for v in learning_rates], value=default,
                    description="peak lr")

    def fetch(value, progress, plot=None):
        def describe(row):
            return f"training lr={value:g}: step {row['step']}/{train_config.steps}"

        def on_row_only(row):
            progress(row["step"] / train_config.steps, describe(row))

        # the floor of the schedule keeps its ratio to the peak (min_lr / lr)
        floor = train_config.final_lr * (value / train_config.lr)
        config = train_config.replace(lr=value, min_lr=min(floor, value))
        callback = (live_callback(progress, train_config.steps, describe, plot) if plot
                    else on_row_only)
        return run_experiment(model_config, config, corpus, label=f"lr={value:g}",
                              callback=callback)

    history = History(keep=3)
    ymax = math.log(model_config.vocab_size) + 1.0

    def plot(figure, lr, run, partial=False):
        ax = figure.add_subplot()
        history.draw_behind(ax, lr, metric_line("val_loss"))
        loss_curves(ax, {f"lr={lr:g}": run}, "val_loss", train=True, smooth=10,
                    title="validation loss (dots) and training loss (thin) against step")
        ax.set_ylabel("loss (nats per character)")
        if partial:  # the whole run's x range from the first preview on: the curve grows into it
            ax.set_xlim(-0.05 * train_config.steps, 1.05 * train_config.steps)
        history.fix_limits(ax, "loss", ymax=ymax)

    def draw(figure, progress, lr):
        if history.reference is None and lr != compare_to:
            history.set_reference(compare_to, f"lr={compare_to:g}", fetch(compare_to, progress))
        result = fetch(lr, progress, lambda fig, rows: plot(fig, lr, rows, partial=True))
        history.record(lr, f"lr={lr:g}", result)
        plot(figure, lr, result)

    return Explorer({"lr": lr}, draw, title="Learning rate and the loss curve", history=history)

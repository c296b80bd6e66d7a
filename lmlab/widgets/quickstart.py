"""The quickstart's explorer: how the learning rate shapes the loss curve."""

from __future__ import annotations

import math

import ipywidgets as W

from ..config import ModelConfig, TrainConfig
from ..data import Corpus
from ..experiments import run_experiment
from ..plots import loss_curves
from . import Explorer, History, metric_line


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

    def fetch(value, progress):
        def report(row):
            progress(row["step"] / train_config.steps, f"training lr={value:g}: step {row['step']}")

        # the floor of the schedule keeps its ratio to the peak (min_lr / lr)
        floor = train_config.final_lr * (value / train_config.lr)
        config = train_config.replace(lr=value, min_lr=min(floor, value))
        return run_experiment(model_config, config, corpus, label=f"lr={value:g}",
                              callback=report)

    history = History(keep=3)

    def draw(figure, progress, lr):
        if history.reference is None and lr != compare_to:
            history.set_reference(compare_to, f"lr={compare_to:g}", fetch(compare_to, progress))
        result = fetch(lr, progress)
        history.record(lr, f"lr={lr:g}", result)
        ax = figure.add_subplot()
        history.draw_behind(ax, lr, metric_line("val_loss"))
        loss_curves(ax, {f"lr={lr:g}": result}, "val_loss", train=True, smooth=10,
                    title="validation loss (dots) and training loss (thin) against step")
        ax.set_ylabel("loss (nats per character)")
        history.fix_limits(ax, "loss", ymax=math.log(model_config.vocab_size) + 1.0)

    return Explorer({"lr": lr}, draw, title="Learning rate and the loss curve", history=history)

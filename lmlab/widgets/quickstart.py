"""The quickstart's explorer: how the learning rate shapes the loss curve."""

from __future__ import annotations

import ipywidgets as W

from ..config import ModelConfig, TrainConfig
from ..data import Corpus
from ..experiments import run_experiment
from ..plots import loss_curves
from . import Explorer


def learning_rate_explorer(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
                           learning_rates=(3e-4, 1e-3, 3e-3, 1e-2), default: float | None = None,
                           compare_to: float | None = None) -> Explorer:
    """Pick a peak learning rate; see its validation (and smoothed training) loss curve next to a
    reference run at ``compare_to``. Runs go through :func:`lmlab.experiments.run_experiment`, so
    each learning rate trains once and is read back from the disk cache afterwards."""
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

    def draw(figure, progress, lr):
        runs = {f"lr={compare_to:g} (reference)": fetch(compare_to, progress)}
        if lr != compare_to:
            runs[f"lr={lr:g}"] = fetch(lr, progress)
        ax = figure.add_subplot()
        loss_curves(ax, runs, "val_loss", train=True, smooth=10,
                    title="validation loss (dots) and training loss (thin) against step")
        ax.set_ylabel("loss (nats per character)")

    return Explorer({"lr": lr}, draw, title="Learning rate and the loss curve")

"""Chapter 4's explorer: pick optimizer, learning rate, warmup, schedule and clipping; see the run.

Every setting is one :func:`lmlab.experiments.run_experiment` call: read back from the cache when it
was run before (the notebook pre-computes its defaults), trained live otherwise, with the status
line following the training steps.
"""

from __future__ import annotations

import math

import ipywidgets as W

from ..config import OPTIMIZERS, SCHEDULES, ModelConfig, TrainConfig
from ..data import Corpus
from ..experiments import run_experiment
from ..plots import loss_curves
from ..train import TrainingDiverged
from . import Explorer, History, live_callback, metric_line

DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
DEFAULT_CLIPS = (0.0, 0.25, 1.0, 4.0)


def _options(values, fmt: str = "{:g}") -> list[tuple[str, float]]:
    return [(fmt.format(v), v) for v in values]


def optimizer_explorer(model_config: ModelConfig, train_config: TrainConfig,
                       corpus: Corpus | str = "tinyshakespeare", *,
                       lrs: tuple[float, ...] = DEFAULT_LRS,
                       warmups: tuple[int, ...] | None = None,
                       clips: tuple[float, ...] = DEFAULT_CLIPS) -> Explorer:
    """Controls: optimizer, lr, warmup steps, schedule, grad clip (0 = off). Left panel: training
    loss (smoothed) and validation loss against step, over the validation curves of the reference
    setting (the defaults, dashed) and of the last settings tried (grey), on fixed axes; right
    panel: the learning rate each step got and the gradient norm before clipping."""
    if warmups is None:
        warmups = tuple(sorted({0, train_config.steps // 20, train_config.steps // 5,
                                train_config.warmup_steps}))
    for name, options, value in (("lr", lrs, train_config.lr),
                                 ("warmup_steps", warmups, train_config.warmup_steps),
                                 ("grad_clip", clips, train_config.grad_clip or 0.0)):
        if value not in options:
            raise ValueError(f"train_config.{name}={value!r} is not among the explorer's options "
                             f"{list(options)}: pass options that include it.")
    style = {"description_width": "initial"}
    controls = {
        "optimizer": W.Dropdown(options=list(OPTIMIZERS), value=train_config.optimizer,
                                description="optimizer", style=style),
        "lr": W.SelectionSlider(options=_options(lrs), value=train_config.lr, description="lr",
                                style=style),
        "warmup": W.SelectionSlider(options=_options(warmups, "{}"),
                                    value=train_config.warmup_steps, description="warmup",
                                    style=style),
        "schedule": W.Dropdown(options=list(SCHEDULES), value=train_config.schedule,
                               description="schedule", style=style),
        "grad_clip": W.Dropdown(options=[("off" if c == 0 else f"{c:g}", c) for c in clips],
                                value=train_config.grad_clip or 0.0, description="clip",
                                style=style),
    }

    history = History(keep=3)

    def plot(fig, key, label, title, grad_clip, rows, partial=False):
        left, right = fig.subplots(1, 2, width_ratios=(3, 2))
        history.draw_behind(left, key, metric_line("val_loss"))
        loss_curves(left, {label: rows}, "val_loss", train=True,
                    smooth=max(1, train_config.steps // 50), title=title)
        left.set_ylabel("loss (nats/char)")
        left.legend(fontsize=7)
        steps = [r["step"] for r in rows]
        right.plot(steps, [r["lr"] for r in rows], color="C0")
        right.set_xlabel("step")
        right.set_ylabel("learning rate", color="C0")
        right.set_title("schedule and gradient norm")
        norms = right.twinx()
        norms.plot(steps, [r["grad_norm"] for r in rows], color="C3", linewidth=0.8)
        if grad_clip:
            norms.axhline(grad_clip, color="C3", linestyle="--", linewidth=0.8)
        norms.set_ylabel("gradient norm (before clipping)", color="C3")
        norms.set_yscale("log")
        if partial:  # the whole run's x range from the first preview on
            for ax in (left, right):
                ax.set_xlim(-0.05 * train_config.steps, 1.05 * train_config.steps)
        history.fix_limits(left, "loss", ymax=math.log(model_config.vocab_size) + 1.0)

    def draw(fig, progress, optimizer, lr, warmup, schedule, grad_clip):
        config = train_config.replace(optimizer=optimizer, lr=lr, warmup_steps=warmup,
                                      schedule=schedule, grad_clip=grad_clip or None)
        label = f"{optimizer}, lr={lr:g}"
        key = (optimizer, lr, warmup, schedule, grad_clip)
        on_step = live_callback(
            progress, config.steps, lambda row: f"training step {row['step']}/{config.steps}",
            lambda f, rows: plot(f, key, label, f"{label} (training)", grad_clip, rows, True))
        try:
            rows = run_experiment(model_config, config, corpus, label=label,
                                  callback=on_step).history
            title = label
        except TrainingDiverged as err:
            rows = err.history
            title = f"{label}: diverged at step {len(rows) + 1}"
        short = (f"{optimizer}, lr={lr:g}, warmup {warmup}, {schedule}, "
                 f"clip {'off' if not grad_clip else f'{grad_clip:g}'}")
        history.record(key, short, rows)
        plot(fig, key, label, title, grad_clip, rows)

    return Explorer(controls, draw, title="Optimizer explorer", figsize=(9.0, 3.8),
                    history=history)

"""Chapter 2 explorer: pick an objective, a masking rate and lambda; see its loss curves.

Each setting is one :func:`lmlab.experiments.objective_run` call: read from the disk cache when it
was run before, trained live (with the progress bar) otherwise.
"""

from __future__ import annotations

import math

import ipywidgets as W

from ..config import ModelConfig, TrainConfig
from ..experiments import objective_run
from ..history import column
from ..objectives import OBJECTIVES, bits_per_char
from . import Explorer, History, live_callback, metric_line


def loss_label(objective: str) -> str:
    """The y-axis label of an objective's loss / ln 2: L_MLM is an average per masked character,
    L_pair one per pair (a sentence pair is one prediction), so their sum has two units."""
    if OBJECTIVES[objective].pair_head:
        return "(L_MLM + lambda L_pair) / ln 2\n(bits per masked char + lambda x bits per pair)"
    return "loss / ln 2 (bits per predicted char)"


def objectives_explorer(model_config: ModelConfig, train_config: TrainConfig,
                        corpus="tinyshakespeare", *, objective: str = "mlm",
                        mask_rate: float = 0.15, pair_weight: float = 1.0):
    """An :class:`lmlab.widgets.Explorer` with controls objective, mask_rate, pair_weight (lambda);
    it draws the training and validation loss / ln 2 against tokens seen: bits per predicted
    character, plus lambda times bits per pair for the objectives with a pair head. The lambda
    control is disabled for the objectives without a pair head, which ignore it."""
    history = History(keep=3)

    controls = {
        "objective": W.Dropdown(options=list(OBJECTIVES), value=objective, description="objective"),
        "mask_rate": W.FloatSlider(value=mask_rate, min=0.05, max=0.5, step=0.05,
                                   description="mask rate", continuous_update=False),
        "pair_weight": W.FloatSlider(value=pair_weight, min=0.0, max=2.0, step=0.25,
                                     description="lambda", continuous_update=False),
    }

    def enable_lambda(_change=None):
        controls["pair_weight"].disabled = not OBJECTIVES[controls["objective"].value].pair_head

    enable_lambda()
    controls["objective"].observe(enable_lambda, names="value")  # before the redraw's observer

    def plot(figure, objective, mask_rate, pair_weight, key, rows, partial=False):
        facts = OBJECTIVES[objective]
        ax = figure.add_subplot()
        for metric, style in (("train_loss", {"alpha": 0.35, "linewidth": 1,
                                              "label": "train (per step)"}),
                              ("val_loss", {"marker": "o", "markersize": 3,
                                            "label": "validation"})):
            tokens, losses = column(rows, metric, x="tokens")
            ax.plot(tokens, [bits_per_char(v) for v in losses], color="C0", **style)
        history.draw_behind(ax, key, metric_line("val_loss", x="tokens", transform=bits_per_char))
        settings = []
        if facts.uses_mask_rate:
            settings.append(f"rate {mask_rate:.2f}")
        if facts.pair_head:
            settings.append(f"lambda {pair_weight:.2f}")
        ax.set_title(f"{objective} {' '.join(settings)}: predicts {facts.predicts}",
                     fontsize=9)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(loss_label(objective), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if partial:  # the whole run's x range from the first preview on
            total = train_config.steps * train_config.batch_size * model_config.block_size
            ax.set_xlim(-0.05 * total, 1.05 * total)
        history.fix_limits(ax, "loss", ymax=math.log2(model_config.vocab_size) + 1.0)

    def draw(figure, progress, objective, mask_rate, pair_weight):
        total = train_config.steps
        facts = OBJECTIVES[objective]
        key = (objective, mask_rate if facts.uses_mask_rate else None,
               pair_weight if facts.pair_head else None)
        on_step = live_callback(
            progress, total, lambda row: f"training {objective}: step {row['step']}/{total}",
            lambda fig, rows: plot(fig, objective, mask_rate, pair_weight, key, rows, True))
        result = objective_run(model_config, train_config, objective, mask_rate, pair_weight,
                               corpus, callback=on_step)
        history.record(key, " ".join(f"{k}" for k in key if k is not None), result)
        plot(figure, objective, mask_rate, pair_weight, key, result.history)

    return Explorer(controls, draw, title="Pretraining objectives", figsize=(7.5, 3.8),
                    history=history)

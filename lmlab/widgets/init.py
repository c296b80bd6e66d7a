"""The initialization explorer: pick a scheme, a depth, a width and a nonlinearity; see the
per-layer activation and gradient std of a deep stack at initialization, and the loss curve of
the same model trained on Tiny Shakespeare (through ``run_experiment``: cached, live otherwise).

The model is :class:`lmlab.init.MLPCharModel`: embedding -> ``depth`` square layers with the
nonlinearity -> output layer, with no normalization, so the initialization alone decides whether
the signal reaches the top and the gradient the bottom.
"""

from __future__ import annotations

import math

import ipywidgets as W
import torch

from .. import init as I
from ..config import ModelConfig, TrainConfig
from ..data import BatchSampler, char_corpus
from ..diagnostics import probe, stack_layers
from ..experiments import run_experiment
from ..objectives import clm_loss
from ..plots import loss_curves, per_layer
from ..train import TrainingDiverged
from . import Explorer, History, live_callback, metric_line

# label -> (scheme, keyword arguments of apply_init)
WIDGET_SCHEMES: dict[str, tuple[str, dict]] = {
    "Glorot normal": ("glorot_normal", {}),
    "Glorot uniform": ("glorot_uniform", {}),
    "He normal": ("he_normal", {}),
    "He uniform": ("he_uniform", {}),
    "N(0, 1)": ("normal", {"std": 1.0}),
    "N(0, 0.02)": ("normal", {"std": 0.02}),
    "Glorot, wrong bound sqrt(6/fan_in)": ("glorot_uniform_fan_in", {}),
    "He as a value sqrt(2/fan_in)": ("he_constant", {}),
    "zeros": ("zeros", {}),
}

STD_RANGE = (1e-6, 1e4)
"""Fixed y range of the per-layer std panel: wide enough for the vanishing and exploding schemes
of the menu to show their trend, fixed so that one scheme's curve compares with another's."""

DEFAULT_TRAIN = TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=25,
                            eval_batches=4, progress=False)


def _positive(values: list[float | None]) -> list[float]:
    """Log-scale friendly: zeros, None and non-finite values become NaN (gaps in the line)."""
    return [v if v is not None and math.isfinite(v) and v > 0 else float("nan") for v in values]


def model_config(vocab_size: int, depth: int, width: int, block_size: int = 32) -> ModelConfig:
    """The ModelConfig the explorer trains under (n_layer = depth, d_model = width)."""
    return ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=depth, n_head=1,
                       d_model=width)


def init_explorer(train_config: TrainConfig = DEFAULT_TRAIN, *, corpus="tinyshakespeare",
                  scheme: str = "Glorot normal", depth: int = 16, width: int = 64,
                  nonlinearity: str = "tanh", depths=(2, 4, 8, 16, 32),
                  widths=(32, 64, 128), nonlinearities=("tanh", "relu", "linear", "gelu"),
                  block_size: int = 32, probe_batch: int = 16) -> Explorer:
    """An :class:`lmlab.widgets.Explorer` with controls ``scheme`` (a label of
    :data:`WIDGET_SCHEMES`), ``depth``, ``width`` and ``nonlinearity``. Left panel: activation and
    gradient std per layer at initialization (one probe on a validation batch); right panel:
    validation (and smoothed training) loss of that model trained with ``train_config``. Both
    panels keep the reference setting (the defaults, dashed) and the last settings tried (grey)
    behind the current one, on fixed axes."""
    if scheme not in WIDGET_SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not one of {list(WIDGET_SCHEMES)}.")
    for name, value, options in [("depth", depth, depths), ("width", width, widths),
                                 ("nonlinearity", nonlinearity, nonlinearities)]:
        if value not in options:
            raise ValueError(f"{name}={value!r} is not among the options {list(options)}.")
    corpus = char_corpus(corpus) if isinstance(corpus, str) else corpus
    vocab = corpus.tokenizer.vocab_size
    sampler = BatchSampler(corpus.val, block_size, probe_batch, "cpu",
                           torch.Generator().manual_seed(train_config.seed))
    x, y = sampler.sample()  # (B, T), (B, T): one fixed probe batch

    controls = {
        "scheme": W.Dropdown(options=list(WIDGET_SCHEMES), value=scheme, description="scheme"),
        "depth": W.Dropdown(options=list(depths), value=depth, description="depth"),
        "width": W.Dropdown(options=list(widths), value=width, description="width"),
        "nonlinearity": W.Dropdown(options=list(nonlinearities), value=nonlinearity,
                                   description="nonlinearity"),
    }

    history = History(keep=3)

    def act_line(ax, data, label, style):
        ax.plot(range(1, len(data["act"]) + 1), data["act"], label=label, **style)

    def plot(fig, scheme, depth, width, nonlinearity, key, act, rows, note="", partial=False):
        ax_stats, ax_loss = fig.subplots(1, 2)
        per_layer(ax_stats, {"activation std": act["act"], "gradient std": act["grad"]},
                  "std over the layer's units", title=f"at initialization ({nonlinearity})")
        loss_curves(ax_loss, {scheme + note: rows}, "val_loss", train=True, smooth=5,
                    title=f"depth {depth}, width {width}: training")
        ax_loss.axhline(math.log(vocab), color="gray", linestyle=":", linewidth=1)
        ax_loss.set_ylabel("loss (nats/char); dotted: ln V")
        history.draw_behind(ax_stats, key, act_line)
        history.draw_behind(ax_loss, key, lambda ax, data, label, style:
                            metric_line("val_loss")(ax, data["rows"], label, style))
        ax_stats.set_ylim(*STD_RANGE)
        history.fix_limits(ax_stats, "std", x=False)
        if partial:  # the whole run's x range from the first preview on
            ax_loss.set_xlim(-0.05 * train_config.steps, 1.05 * train_config.steps)
        history.fix_limits(ax_loss, "loss", ymax=math.log(vocab) + 1.0)
        ax_stats.legend(fontsize=6)
        ax_loss.legend(fontsize=6)

    def draw(fig, progress, scheme, depth, width, nonlinearity):
        name, kwargs = WIDGET_SCHEMES[scheme]
        cfg = model_config(vocab, depth, width, block_size)
        builder = I.mlp_builder(name, nonlinearity, **kwargs)
        torch.manual_seed(train_config.seed)
        model = builder(cfg)
        stats = probe(model, stack_layers(model.stack), x, lambda logits: clm_loss(logits, y))
        act = {"act": _positive([s.act_std for s in stats.values()]),
               "grad": _positive([s.grad_std for s in stats.values()])}
        key = (scheme, depth, width, nonlinearity)
        steps = train_config.steps
        on_row = live_callback(
            progress, steps, lambda row: f"training {row['step']}/{steps}",
            lambda f, rows: plot(f, scheme, depth, width, nonlinearity, key, act, rows,
                                 partial=True))
        try:
            history_rows = run_experiment(cfg, train_config, corpus, builder=builder,
                                          callback=on_row).history
            note = ""
        except TrainingDiverged as err:
            history_rows, note = err.history, " (diverged)"
        history.record(key, f"{scheme}, {nonlinearity}, {depth}x{width}",
                       {"act": act["act"], "rows": history_rows})
        plot(fig, scheme, depth, width, nonlinearity, key, act, history_rows, note)

    return Explorer(controls, draw, title="Initialization explorer", figsize=(9.5, 3.8),
                    history=history)

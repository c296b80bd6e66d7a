"""Chapter 6's explorer: one way of adapting the pretrained model to a speaker, its curves beside
the reference and the last ones picked.

A thin wrapper: each pick is one :func:`lmlab.finetune.adaptation` (read from the disk cache when
the chapter or an earlier pick ran it, trained live otherwise), drawn as the held-out speaker loss
and the general loss (forgetting) against the step.
"""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as W

from ..finetune import AdaptConfig, SpeakerTask, adaptation
from ..model import Transformer
from . import Explorer, History, metric_line


def finetune_explorer(base: Transformer, base_key: str, task: SpeakerTask,
                      methods: Mapping[str, AdaptConfig], default: str | None = None) -> Explorer:
    """A dropdown of named adaptation settings (``methods``: label -> AdaptConfig, e.g. probe,
    fine-tune, LoRA at a rank, soft prompt of a length); draws the held-out loss on the
    speaker's lines and the loss on everyone else's text against the step, with the number of
    trainable parameters. The default pick (dashed) and the last three picks (grey) stay drawn
    behind, on axes that only grow."""
    if not methods:
        raise ValueError("methods is empty: give at least one label -> AdaptConfig.")
    default = next(iter(methods)) if default is None else default
    if default not in methods:
        raise ValueError(f"default {default!r} is not among the methods {list(methods)}.")
    controls = {"method": W.Dropdown(options=list(methods), value=default, description="method",
                                     style={"description_width": "initial"})}
    history = History(keep=3)

    def draw(figure, progress, method):
        config = methods[method]

        def report(row):
            progress(row["step"] / config.steps, f"training live: step {row['step']} / "
                                                 f"{config.steps}")

        result = adaptation(base, base_key, task, config, callback=report)
        history.record(method, f"{method} ({result.trainable:,} trained)", result.history)
        axes = figure.subplots(1, 2)
        for ax, metric, title in ((axes[0], "speaker_loss", f"held-out lines of {task.speaker}"),
                                  (axes[1], "general_loss", "everyone else (forgetting)")):
            history.draw_behind(ax, method, metric_line(metric))
            steps, values = result.column(metric)
            ax.plot(steps, values, color="C0", marker="o", markersize=3,
                    label=f"{method} ({result.trainable:,} trained)")
            ax.set(xlabel="step", title=title)
            ax.grid(alpha=0.3)
            history.fix_limits(ax, metric)
        axes[0].set_ylabel("loss (nats/char)")
        axes[0].legend(fontsize=7)
        final = result.final
        figure.suptitle(f"{method}: speaker {final['speaker_loss']:.3f}, general "
                        f"{final['general_loss']:.3f} after {config.steps} steps", fontsize=9)

    return Explorer(controls, draw, title="Fine-tuning explorer: what to train",
                    figsize=(9.0, 3.8), history=history)

"""Chapter 7's explorer: the distillation temperature T and weight alpha, and the KL coefficient
beta of policy-gradient fine-tuning, against their curves.

A thin wrapper: each (T, alpha) is one :func:`lmlab.distill.distilled_run` and each beta one
:func:`lmlab.rl.letter_free_run`, read from the disk cache when run before and trained live
otherwise. The curves of the reference setting (the defaults, dashed) and of the last settings
tried (grey) stay drawn behind the current one, on axes that only grow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from ..config import ModelConfig, TrainConfig
from ..data import Corpus
from ..distill import distilled_run
from ..experiments import Result
from ..history import column
from ..rl import PolicyGradientConfig, letter_free_run
from . import Explorer, History, value_slider


def _rows_plot(part: str, metric: str):
    """A ``plot`` for History.draw_behind: ``metric`` against the step, from the ``part``
    ("distill" or "rl") of a trace's data."""

    def plot(ax, data, label, style):
        ax.plot(*column(data[part], metric), label=label, **style)

    return plot


def distill_rl_explorer(student_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
                        teacher: Result, base: Result, rl_config: PolicyGradientConfig, *,
                        temperatures: Sequence[float] = (1.0, 2.0, 4.0),
                        alphas: Sequence[float] = (0.0, 0.5, 0.9),
                        betas: Sequence[float] = (0.0, 0.01, 0.05),
                        defaults: dict | None = None, letter: str = "e") -> Explorer:
    """Sliders for T, alpha (distillation of ``teacher`` into ``student_config`` at the budget of
    ``train_config``) and beta (REINFORCE on the reward "no letter ``letter``" from the model of
    ``base``, with ``rl_config``). Three panels: the student's validation loss (the label-only
    student drawn too), the reward, and the log-likelihood per character of the policy's samples
    under the reference model."""
    defaults = {"temperature": temperatures[0], "alpha": alphas[-1], "beta": betas[-1],
                **(defaults or {})}
    controls = {
        "temperature": value_slider("distillation T", temperatures, defaults["temperature"]),
        "alpha": value_slider("alpha (soft weight)", alphas, defaults["alpha"]),
        "beta": value_slider("KL beta (RL)", betas, defaults["beta"]),
    }
    history = History(keep=3)
    steps = train_config.steps

    def plot(figure, temperature, alpha, beta, key, labels_rows, student_rows, rl_rows):
        """The three panels from the rows so far (a preview while a run trains, then the
        finished figure): labels-only and distilled validation loss, reward, log pi_ref."""
        ax_d, ax_r, ax_l = figure.subplots(1, 3)
        history.draw_behind(ax_d, key, _rows_plot("distill", "val_loss"))
        for rows, label, style in (
                (labels_rows, "labels only", {"color": "C1", "linestyle": ":"}),
                (student_rows, f"T={temperature:g}, alpha={alpha:g}", {"color": "C0"})):
            s, v = column(rows, "val_loss")
            if v:
                ax_d.plot(s, v, marker="o", markersize=3, label=f"{label}: {v[-1]:.3f}", **style)
        ax_d.set(xlabel="step", ylabel="validation loss (nats/char)",
                 title=f"student, T={temperature:g}, alpha={alpha:g}")
        if ax_d.get_legend_handles_labels()[0]:  # a first preview may have nothing yet
            ax_d.legend(fontsize=7)
        history.fix_limits(ax_d, "distill", ymax=math.log(student_config.vocab_size))

        for ax, metric, name in ((ax_r, "reward", f"reward: share of letters not '{letter}'"),
                                 (ax_l, "ref_logprob_per_char",
                                  "log pi_ref per char of the samples")):
            history.draw_behind(ax, key, _rows_plot("rl", metric))
            if rl_rows:
                ax.plot(*column(rl_rows, metric), color="C2",
                        label=f"beta={beta:g}: {rl_rows[-1][metric]:.3f}")
            ax.set(xlabel="policy-gradient step", title=name)
            if ax.get_legend_handles_labels()[0]:  # nothing before the policy's first row
                ax.legend(fontsize=7)
            history.fix_limits(ax, metric)

    def draw(figure, progress, temperature, alpha, beta):
        key = (temperature, alpha, beta)
        runs: dict = {"labels": [], "student": [], "rl": []}  # rows of the runs done so far

        def live(part: str, total: int, what: str):
            """A callback that keeps ``part``'s rows and previews the figure as it grows."""
            def on_row(row: dict) -> None:
                runs[part].append(row)
                progress(row["step"] / total, f"{what} live: step {row['step']} / {total}",
                         preview=lambda f: plot(f, temperature, alpha, beta, key,
                                                runs["labels"], runs["student"], runs["rl"]))
            return on_row

        labels = distilled_run(student_config, train_config, corpus, None, alpha=0.0,
                               callback=live("labels", steps, "labels-only student"))
        runs["labels"] = labels.history
        student = distilled_run(student_config, train_config, corpus, teacher,
                                temperature=temperature, alpha=alpha,
                                callback=live("student", steps, "distilling"))
        runs["student"] = student.history
        rl = letter_free_run(base, corpus.tokenizer, dataclasses.replace(rl_config, beta=beta),
                             letter=letter,
                             callback=live("rl", rl_config.steps, "policy gradient"))
        history.record(key, f"T={temperature:g}, alpha={alpha:g}, beta={beta:g}",
                       {"distill": student.history, "rl": rl["history"]})
        plot(figure, temperature, alpha, beta, key, labels.history, student.history,
             rl["history"])

    return Explorer(controls, draw, title="Distillation and RL explorer",
                    figsize=(11.0, 3.8), history=history)

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
from ..rl import PolicyGradientConfig, letter_free_run
from . import Explorer, History, value_slider


def _rows_plot(part: str, metric: str):
    """A ``plot`` for History.draw_behind: ``metric`` against the step, from the ``part``
    ("distill" or "rl") of a trace's data."""

    def plot(ax, data, label, style):
        rows = [r for r in data[part] if r.get(metric) is not None]
        ax.plot([r["step"] for r in rows], [r[metric] for r in rows], label=label, **style)

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

    def draw(figure, progress, temperature, alpha, beta):
        def report_distill(row):
            progress(row["step"] / steps, f"distilling live: step {row['step']} / {steps}")

        def report_rl(row):
            progress(row["step"] / rl_config.steps,
                     f"policy gradient live: step {row['step']} / {rl_config.steps}")

        labels = distilled_run(student_config, train_config, corpus, None, alpha=0.0,
                               callback=report_distill)
        student = distilled_run(student_config, train_config, corpus, teacher,
                                temperature=temperature, alpha=alpha, callback=report_distill)
        rl = letter_free_run(base, corpus.tokenizer, dataclasses.replace(rl_config, beta=beta),
                             letter=letter, callback=report_rl)
        key = (temperature, alpha, beta)
        history.record(key, f"T={temperature:g}, alpha={alpha:g}, beta={beta:g}",
                       {"distill": student.history, "rl": rl["history"]})
        ax_d, ax_r, ax_l = figure.subplots(1, 3)

        history.draw_behind(ax_d, key, _rows_plot("distill", "val_loss"))
        for run, style in ((labels, {"color": "C1", "linestyle": ":"}), (student, {"color": "C0"})):
            s, v = run.column("val_loss")
            ax_d.plot(s, v, marker="o", markersize=3, label=f"{run.label}: {v[-1]:.3f}", **style)
        ax_d.set(xlabel="step", ylabel="validation loss (nats/char)",
                 title=f"student, T={temperature:g}, alpha={alpha:g}")
        ax_d.legend(fontsize=7)
        history.fix_limits(ax_d, "distill", ymax=math.log(student_config.vocab_size))

        for ax, metric, name in ((ax_r, "reward", f"reward: share of letters not '{letter}'"),
                                 (ax_l, "ref_logprob_per_char",
                                  "log pi_ref per char of the samples")):
            history.draw_behind(ax, key, _rows_plot("rl", metric))
            rows = rl["history"]
            ax.plot([r["step"] for r in rows], [r[metric] for r in rows], color="C2",
                    label=f"beta={beta:g}: {rows[-1][metric]:.3f}")
            ax.set(xlabel="policy-gradient step", title=name)
            ax.legend(fontsize=7)
            history.fix_limits(ax, metric)

    return Explorer(controls, draw, title="Distillation and RL explorer",
                    figsize=(11.0, 3.8), history=history)

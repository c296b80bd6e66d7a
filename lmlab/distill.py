"""Knowledge distillation: a small student trained on a larger teacher's soft targets.

Hinton, Vinyals & Dean (2015): soften both models' next-character distributions with a
temperature T, p^T = softmax(z / T), and train the student on

    L = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(labels, p_student),

the soft term from :func:`lmlab.objectives.distillation_loss`. Why T^2: the gradient of the soft
term with respect to a student logit is

    d KL / d z_s,i = (p_student,i^T - p_teacher,i^T) / T,

and for T large against the logits p^T ~ (1 + z_i / T) / V, so it becomes
(z_s,i - z_t,i - mean_j (z_s,j - z_t,j)) / (V T^2): it shrinks as 1 / T^2. Multiplying by T^2 keeps
the soft term's pull comparable with the label term's whatever T is (and in the limit distillation
becomes matching centred logits, :func:`logit_matching_limit`).

:func:`distill_train` is :func:`lmlab.train` itself with this loss passed in place of the
objective's (``loss_fn=DistillationLoss(teacher, T, alpha)``): same batches, optimizer, schedule,
clipping, evaluation, checkpoints and resume. With ``alpha=0`` it reproduces ``lmlab.train``
exactly (a test checks it bit for bit on the CPU), so a distilled student and a label-only one
differ in nothing but the loss. :func:`distilled_run` caches its result like
:func:`lmlab.experiments.run_experiment`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, TrainConfig
from .data import CharTokenizer, Corpus
from .device import pick_device
from .experiments import Result, cached_record, run_key
from .model import Transformer
from .modes import eval_mode
from .objectives import ObjectiveContext, clm_loss, distillation_loss
from .train import Run, train


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^T = softmax(z / T) over the last dim: (..., V) -> (..., V). T = 1 is the model's own
    distribution; T > 1 flattens it, bringing up the small probabilities ("dark knowledge")."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid: expected T > 0.")
    return F.softmax(logits.float() / temperature, dim=-1)


def distillation_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                           targets: torch.Tensor, temperature: float, alpha: float,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """L = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(targets): logits (B, T, V),
    targets (B, T), CE with ``label_smoothing`` (:func:`lmlab.objectives.clm_loss`). ``alpha=0``
    is the cross-entropy alone (the teacher is not needed: pass None); ``alpha=1`` the soft term
    alone."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is invalid: expected a weight in [0, 1].")
    if alpha == 0:
        return clm_loss(student_logits, targets, label_smoothing)
    if teacher_logits is None:
        raise ValueError(f"alpha={alpha} > 0 needs the teacher's logits.")
    soft = distillation_loss(student_logits, teacher_logits, temperature=temperature)
    if alpha == 1:
        return soft
    return alpha * soft + (1 - alpha) * clm_loss(student_logits, targets, label_smoothing)


def logit_matching_limit(student_logits: torch.Tensor, teacher_logits: torch.Tensor
                         ) -> torch.Tensor:
    """The large-T limit of d(T^2 KL) / d z_s for one position: (d - mean(d)) / V with
    d = z_s - z_t, logits (V,) -> (V,) (Hinton et al. 2015, section 2.1)."""
    d = (student_logits - teacher_logits).float()  # (V,)
    return (d - d.mean()) / d.numel()


def _check_distillable(student: nn.Module, teacher: nn.Module | None, config: TrainConfig,
                       temperature: float, alpha: float) -> None:
    if config.objective != "clm":
        raise ValueError(f"objective={config.objective!r}: distillation trains a causal student "
                         "on next-character targets; use objective='clm'.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is invalid: expected a weight in [0, 1].")
    if alpha > 0 and not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid: expected T > 0.")
    if alpha > 0 and teacher is None:
        raise ValueError(f"alpha={alpha} > 0 needs a teacher model.")
    if teacher is not None:
        s, t = student.config, teacher.config
        if t.vocab_size != s.vocab_size or t.block_size < s.block_size:
            raise ValueError(f"teacher (vocab {t.vocab_size}, context {t.block_size}) must share "
                             f"the student's vocabulary ({s.vocab_size}) and see at least its "
                             f"context ({s.block_size}).")


@dataclasses.dataclass(frozen=True, eq=False)
class DistillationLoss:
    """The training loss :func:`distill_train` hands to :func:`lmlab.train` (``loss_fn``), with
    the signature of an objective's loss, ``(model, x (B, T), y (B, T), ctx) -> scalar``:

        L = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(y, p_student),

    :func:`distillation_objective` on the student's logits and the frozen teacher's (computed
    without gradients, after the student's forward pass, so the student's dropout draws come
    first), CE with the run's label smoothing (``ctx.label_smoothing``). ``teacher`` is None
    when ``alpha=0``: then L is the clm objective's loss."""

    teacher: nn.Module | None
    temperature: float
    alpha: float

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ctx: ObjectiveContext) -> torch.Tensor:
        student_logits = model(x)  # (B, T, V)
        teacher_logits = None
        if self.alpha > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(x)  # (B, T, V)
        return distillation_objective(student_logits, teacher_logits, y, self.temperature,
                                      self.alpha, ctx.label_smoothing)


def distill_train(student: nn.Module, teacher: nn.Module | None, corpus: Corpus,
                  config: TrainConfig, *, temperature: float = 2.0, alpha: float = 0.5,
                  callback: Callable[[dict], None] | None = None,
                  resume: str | Path | None = None) -> Run:
    """Train ``student`` on ``corpus`` with :func:`distillation_objective` against ``teacher``
    (frozen, eval mode; ``None`` allowed when ``alpha=0``): :func:`lmlab.train` with
    ``loss_fn=DistillationLoss(teacher, temperature, alpha)``, so

        for step in 1 .. steps:  x, y <- batch;  L <- alpha T^2 KL + (1 - alpha) CE
                                 clip grad to config.grad_clip;  AdamW step at lr_at(step)
                                 every eval_every steps: val_loss (plain CE) on fixed batches

    with everything the loop does (gradient accumulation, checkpoints, ``keep_best``,
    ``patience``, ``compile``, Ctrl-C, ``resume`` from a checkpoint of the same distillation).
    ``val_loss`` and ``eval_train_loss`` are the student's plain cross-entropy (what it is
    judged on), ``train_loss`` the training objective.
    """
    teacher = teacher if alpha > 0 else None
    _check_distillable(student, teacher, config, temperature, alpha)
    if teacher is not None:
        teacher.to(pick_device(config.device)).eval()
    return train(student, corpus, config, resume=resume, callback=callback,
                 loss_fn=DistillationLoss(teacher, temperature, alpha))


def _variant(teacher: Result | None, temperature: float, alpha: float) -> str:
    if alpha == 0:  # labels only: the teacher and T play no part
        return "distill alpha=0"
    return f"distill teacher={teacher.key} T={float(temperature):g} alpha={float(alpha):g}"


def distilled_run(student_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
                  teacher: Result | None, *, temperature: float = 2.0, alpha: float = 0.5,
                  label: str | None = None, callback: Callable[[dict], None] | None = None
                  ) -> Result:
    """One student run of :func:`distill_train` (the student built right after
    ``torch.manual_seed(train_config.seed)``, as :func:`lmlab.experiments.run_experiment` builds
    a model), cached on disk by student config, train config, corpus, the teacher run's key,
    T and alpha. ``teacher``: a :class:`Result` that kept its weights (``None`` for alpha=0)."""
    if alpha > 0 and teacher is None:
        raise ValueError(f"alpha={alpha} > 0 needs a teacher run (a Result with weights).")
    variant = _variant(teacher, temperature, alpha)
    key = run_key(student_config, train_config, corpus, variant)

    def compute() -> dict:
        teacher_model = teacher.load_model() if alpha > 0 else None
        torch.manual_seed(train_config.seed)
        student = Transformer(student_config)
        run = distill_train(student, teacher_model, corpus, train_config,
                            temperature=temperature, alpha=alpha, callback=callback)
        return {"history": run.history, "info": {"interrupted": run.interrupted}}

    record, cached = cached_record(key, compute)
    label = label or (f"T={temperature:g}, alpha={alpha:g}" if alpha > 0 else "labels only")
    return Result(key=key, label=label, model_config=student_config, train_config=train_config,
                  corpus=corpus.name, history=record["history"], variant=variant, cached=cached,
                  info=record["info"])


def temperature_sweep(student_config: ModelConfig, train_config: TrainConfig, corpus: Corpus,
                      teacher: Result, temperatures: Sequence[float], alpha: float,
                      seeds: Sequence[int] = (0,)) -> dict[float, list[Result]]:
    """{T: [distilled_run at T for each seed]}: the same student and budget, T varied."""
    return {float(t): [distilled_run(student_config, train_config.replace(seed=s), corpus,
                                     teacher, temperature=t, alpha=alpha) for s in seeds]
            for t in temperatures}


@dataclasses.dataclass
class SoftTargets:
    """A model's next-character distribution after ``context`` at several temperatures."""

    context: str
    chars: list[str]  # the vocabulary's characters (special tokens left out)
    probs: dict[float, torch.Tensor]  # T -> (n_chars,), sums to 1

    def top(self, temperature: float, k: int = 8) -> list[tuple[str, float]]:
        """The ``k`` most likely characters at ``temperature`` with their probabilities."""
        p = self.probs[temperature]
        values, ids = p.topk(min(k, p.numel()))
        return [(self.chars[i], float(v)) for v, i in zip(values, ids.tolist(), strict=True)]

    def entropy(self, temperature: float) -> float:
        """H(p^T) = -sum_i p_i log p_i, in nats (0 for a one-hot, ln n_chars for uniform)."""
        p = self.probs[temperature]
        return float(-(p * p.clamp_min(1e-30).log()).sum())


def soft_target_view(model: nn.Module, tokenizer: CharTokenizer, context: str,
                     temperatures: Sequence[float]) -> SoftTargets:
    """The soft targets a teacher gives for the character after ``context`` (the last
    ``block_size`` characters of it), over the characters only: softmax(z / T) restricted to ids
    < n_chars, renormalized (the special tokens never follow text)."""
    if not context:
        raise ValueError("context is empty: give the text whose next character to look at.")
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(context)[-model.config.block_size:]], device=device)
    with torch.no_grad(), eval_mode(model):
        logits = model(ids)[0, -1, : tokenizer.n_chars].float().cpu()  # (n_chars,)
    probs = {float(t): soft_targets(logits, t) for t in temperatures}
    return SoftTargets(context, list(tokenizer.chars), probs)

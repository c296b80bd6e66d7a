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

:func:`distill_train` is the training loop of :func:`lmlab.train` (same batches, optimizer,
schedule, clipping, evaluation) with this loss in place of the plain cross-entropy; with
``alpha=0`` it reproduces ``lmlab.train`` exactly (a test checks it bit for bit on the CPU), so a
distilled student and a label-only one differ in nothing but the loss. :func:`distilled_run`
caches its result like :func:`lmlab.experiments.run_experiment`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, TrainConfig
from .data import BatchSampler, CharTokenizer, Corpus
from .device import SEED_OFFSETS, autocast_context, autocast_dtype, pick_device
from .evaluation import eval_batches, evaluate
from .experiments import Result, cached_record, run_key
from .model import Transformer
from .modes import eval_mode
from .objectives import clm_loss, distillation_loss
from .optim import build_optimizer, lr_at, set_lr
from .train import Run, TrainingDiverged


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^T = softmax(z / T) over the last dim: (..., V) -> (..., V). T = 1 is the model's own
    distribution; T > 1 flattens it, bringing up the small probabilities ("dark knowledge")."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid: expected T > 0.")
    return F.softmax(logits.float() / temperature, dim=-1)


def distillation_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                           targets: torch.Tensor, temperature: float, alpha: float
                           ) -> torch.Tensor:
    """L = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(targets): logits (B, T, V),
    targets (B, T). ``alpha=0`` is the plain cross-entropy (the teacher is not needed: pass None);
    ``alpha=1`` the soft term alone."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is invalid: expected a weight in [0, 1].")
    if alpha == 0:
        return clm_loss(student_logits, targets)
    if teacher_logits is None:
        raise ValueError(f"alpha={alpha} > 0 needs the teacher's logits.")
    soft = distillation_loss(student_logits, teacher_logits, temperature=temperature)
    if alpha == 1:
        return soft
    return alpha * soft + (1 - alpha) * clm_loss(student_logits, targets)


def logit_matching_limit(student_logits: torch.Tensor, teacher_logits: torch.Tensor
                         ) -> torch.Tensor:
    """The large-T limit of d(T^2 KL) / d z_s for one position: (d - mean(d)) / V with
    d = z_s - z_t, logits (V,) -> (V,) (Hinton et al. 2015, section 2.1)."""
    d = (student_logits - teacher_logits).float()  # (V,)
    return (d - d.mean()) / d.numel()


def _check_distillable(student: nn.Module, teacher: nn.Module | None, config: TrainConfig
                       ) -> None:
    if config.objective != "clm":
        raise ValueError(f"objective={config.objective!r}: distillation trains a causal student "
                         "on next-character targets; use objective='clm'.")
    unsupported = {"grad_accum": config.grad_accum != 1, "keep_best": config.keep_best,
                   "checkpoint_every": config.checkpoint_every != 0,
                   "patience": config.patience != 0, "compile": config.compile}
    named = [k for k, v in unsupported.items() if v]
    if named:
        raise ValueError(f"distill_train does not support {named}: leave them at their defaults "
                         "(lmlab.train has them for label-only runs).")
    if teacher is not None:
        s, t = student.config, teacher.config
        if t.vocab_size != s.vocab_size or t.block_size < s.block_size:
            raise ValueError(f"teacher (vocab {t.vocab_size}, context {t.block_size}) must share "
                             f"the student's vocabulary ({s.vocab_size}) and see at least its "
                             f"context ({s.block_size}).")


def distill_train(student: nn.Module, teacher: nn.Module | None, corpus: Corpus,
                  config: TrainConfig, *, temperature: float = 2.0, alpha: float = 0.5,
                  callback: Callable[[dict], None] | None = None) -> Run:
    """Train ``student`` on ``corpus`` with :func:`distillation_objective` against ``teacher``
    (frozen, eval mode; ``None`` allowed when ``alpha=0``). The loop is :func:`lmlab.train`'s:

        for step in 1 .. steps:  x, y <- batch;  L <- alpha T^2 KL + (1 - alpha) CE
                                 clip grad to config.grad_clip;  AdamW step at lr_at(step)
                                 every eval_every steps: val_loss (plain CE) on fixed batches

    ``val_loss`` and ``eval_train_loss`` are the student's plain cross-entropy (what it is
    judged on), ``train_loss`` the training objective. Ctrl-C returns the partial run with
    ``interrupted=True``.
    """
    _check_distillable(student, teacher if alpha > 0 else None, config)
    device = pick_device(config.device)
    student.to(device)
    if alpha > 0:
        teacher.to(device).eval()
    block = student.config.block_size
    sample_gen = torch.Generator(device=device).manual_seed(config.seed)
    sampler = BatchSampler(corpus.train, block, config.batch_size, device, sample_gen)
    val_batches = eval_batches(corpus, block, config, "val", device)
    train_batches = eval_batches(corpus, block, config, "train", device)
    optimizer = build_optimizer(student, config, device)
    amp_dtype = autocast_dtype(device, config.dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast():
        return autocast_context(device, amp_dtype)

    params = [p for p in student.parameters() if p.requires_grad]
    clip = config.grad_clip if config.grad_clip else math.inf
    run = Run(student, config, [])
    torch.manual_seed(config.seed)  # dropout draws, as lmlab.train
    t0 = time.perf_counter()
    student.train()
    try:
        for step in range(1, config.steps + 1):
            lr = lr_at(step, config)
            set_lr(optimizer, lr)
            x, y = sampler.sample()  # (B, T), (B, T)
            with autocast():
                student_logits = student(x)  # (B, T, V)
                teacher_logits = None
                if alpha > 0:
                    with torch.no_grad():
                        teacher_logits = teacher(x)  # (B, T, V)
                loss = distillation_objective(student_logits, teacher_logits, y, temperature,
                                              alpha)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            train_loss, grad_norm = torch.stack([loss.detach().float(), norm.float()]).tolist()
            if not math.isfinite(train_loss) or (not math.isfinite(grad_norm)
                                                 and not scaler.is_enabled()):
                optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(f"the distillation loss or gradient became non-finite at "
                                       f"step {step} (lr={lr:.3g}); try a lower lr.", run)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            row = {"step": step, "tokens": step * config.batch_size * block, "lr": lr,
                   "train_loss": train_loss, "grad_norm": grad_norm}
            if step % config.eval_every == 0 or step == config.steps:
                seed = config.seed + SEED_OFFSETS["eval_objective"]
                row["val_loss"] = evaluate(student, val_batches, "clm", autocast=autocast,
                                           seed=seed)
                row["eval_train_loss"] = evaluate(student, train_batches, "clm",
                                                  autocast=autocast, seed=seed)
            row["seconds"] = time.perf_counter() - t0
            run.history.append(row)
            if callback is not None:
                callback(row)
    except KeyboardInterrupt:
        run.interrupted = True
        print(f"Interrupted after step {len(run.history)}: the partial history is in "
              ".history and nothing was cached; run the cell again to train it whole.")
    return run


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

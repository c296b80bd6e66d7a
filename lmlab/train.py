"""The one training loop.

    for step in 1 .. steps:
        lr <- schedule(step)
        g <- (1/A) sum_{a=1..A} grad L(batch_a)        (A = grad_accum micro-batches)
        g <- g * min(1, clip / ||g||)                   (global-norm clipping)
        theta <- optimizer(theta, g, lr)
        every eval_every steps: validation loss on fixed batches

Batches are drawn on the device, matmuls autocast to bf16 on CUDA, and everything a learner did
survives: checkpoints are atomic, a NaN/inf loss raises :class:`TrainingDiverged` carrying the
history, and an interrupt (the stop button) returns the partial :class:`Run` after writing a
checkpoint from which ``train(..., resume=path)`` continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .checkpoint import checkpoint_name, load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import BatchSampler, Corpus
from .device import autocast_dtype, compile_model, pick_device
from .objectives import OBJECTIVES, ObjectiveContext
from .optim import build_optimizer, lr_at
from .paths import cache_dir


@dataclass
class Run:
    """What a training run produced: the model, its history rows and where checkpoints went."""

    model: nn.Module
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    checkpoint_path: Path | None = None
    best_path: Path | None = None
    interrupted: bool = False
    stopped_early: bool = False

    @property
    def evals(self) -> list[dict]:
        """The rows that carry a validation loss."""
        return [r for r in self.history if r.get("val_loss") is not None]

    @property
    def final_val_loss(self) -> float | None:
        evals = self.evals
        return evals[-1]["val_loss"] if evals else None

    @property
    def best_val_loss(self) -> float | None:
        evals = self.evals
        return min(r["val_loss"] for r in evals) if evals else None

    def column(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) for rows that have ``key``: ready to plot."""
        rows = [r for r in self.history if r.get(key) is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. ``.run`` holds the history up to the last good step."""

    def __init__(self, message: str, run: Run):
        super().__init__(message)
        self.run = run
        self.history = run.history


def _rng_state(*generators: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    for i, g in enumerate(generators):
        state[f"gen{i}"] = g.get_state()
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, *generators: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    for i, g in enumerate(generators):
        g.set_state(state[f"gen{i}"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _fixed_batches(data: torch.Tensor, block_size: int, batch_size: int, n: int, seed: int,
                   device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(data, block_size, batch_size, "cpu", g)
    return [tuple(t.to(device) for t in sampler.sample()) for _ in range(n)]


EVAL_SEED_OFFSETS = {"val": 2, "train": 3}


def eval_batches(corpus: Corpus, block_size: int, config: TrainConfig, split: str = "val",
                 device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed batches :func:`train` scores: ``split="val"`` gives those of ``val_loss``,
    ``"train"`` those of ``eval_train_loss`` (``config.eval_batches`` batches of
    ``config.batch_size`` windows, drawn with seed ``config.seed + EVAL_SEED_OFFSETS[split]``)."""
    if split not in EVAL_SEED_OFFSETS:
        raise ValueError(f"split={split!r} is invalid: expected 'val' or 'train'.")
    data = corpus.val if split == "val" else corpus.train
    return _fixed_batches(data, block_size, config.batch_size, config.eval_batches,
                          config.seed + EVAL_SEED_OFFSETS[split], torch.device(device))


@torch.no_grad()
def evaluate(model: nn.Module, batches, objective: str = "clm", ctx: ObjectiveContext | None = None,
             autocast=contextlib.nullcontext, seed: int = 0) -> float:
    """Mean loss of ``objective`` over ``batches`` in eval mode (no dropout); restores the mode.
    Randomness the objective needs (MLM masks) comes from a generator reseeded with ``seed``,
    so the same model always gets the same score."""
    was_training = model.training
    model.eval()
    fn = OBJECTIVES[objective]
    ctx = ctx if ctx is not None else ObjectiveContext(tokenizer=None)
    if ctx.generator is not None:
        ctx.generator.manual_seed(seed)
    total = 0.0
    for x, y in batches:
        with autocast():
            total += float(fn(model, x, y, ctx))
    model.train(was_training)
    return total / len(batches)


def _payload(model, optimizer, step, history, rng, model_config, config, tokenizer, best) -> dict:
    return {
        "format": "lmlab-checkpoint-1",
        "lmlab_version": __version__,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "history": [dict(r) for r in history],
        "best": dict(best),
        "model_config": dataclasses.asdict(model_config) if model_config else None,
        "train_config": dataclasses.asdict(config),
        "tokenizer": tokenizer.state_dict() if tokenizer is not None else None,
    }


def train(model: nn.Module, corpus: Corpus, config: TrainConfig, resume: str | Path | None = None,
          callback: Callable[[dict], None] | None = None) -> Run:
    """Train ``model`` on ``corpus`` as ``config`` says; returns a :class:`Run`.

    ``resume``: a checkpoint path; training continues from its step with its model, optimizer and
    RNG states and history, so an interrupted-then-resumed run equals an uninterrupted one (on CPU,
    exactly). ``callback(row)`` is called after every step with that step's history row.
    """
    device = pick_device(config.device)
    model.to(device)
    model_config = getattr(model, "config", None)
    model_config = model_config if isinstance(model_config, ModelConfig) else None
    if model_config is None:
        raise ValueError("train() needs a model whose .config is a ModelConfig (for block_size).")
    block_size = model_config.block_size
    tokenizer = corpus.tokenizer

    sample_gen = torch.Generator(device=device).manual_seed(config.seed)
    objective_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    eval_gen = torch.Generator(device=device)
    sampler = BatchSampler(corpus.train, block_size, config.batch_size, device, sample_gen)
    val_batches = eval_batches(corpus, block_size, config, "val", device)
    train_batches = eval_batches(corpus, block_size, config, "train", device)
    ctx = ObjectiveContext(tokenizer, objective_gen, config.label_smoothing, config.mask_rate,
                           config.pair_weight)
    eval_ctx = ObjectiveContext(tokenizer, eval_gen, 0.0, config.mask_rate, config.pair_weight)
    objective = OBJECTIVES[config.objective]
    optimizer = build_optimizer(model, config, device)
    amp_dtype = autocast_dtype(device, config.dtype)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    history: list[dict] = []
    best = {"val_loss": math.inf, "step": 0}
    step0 = 0
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], sample_gen, objective_gen, device=device)
        history = [dict(r) for r in state["history"]]
        best = dict(state.get("best") or best)
        step0 = int(state["step"])
        if step0 >= config.steps:
            return Run(model, config, history)
    else:
        torch.manual_seed(config.seed)  # dropout draws: same seed, same run

    forward_model = compile_model(model, config.compile,
                                  (model_config, config.batch_size, config.objective))
    params = [p for p in model.parameters() if p.requires_grad]
    folder = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    run = Run(model, config, history)
    tokens_per_step = config.batch_size * block_size * config.grad_accum
    clip = config.grad_clip if config.grad_clip else math.inf
    elapsed0 = history[-1]["seconds"] if history else 0.0
    t0 = time.perf_counter()
    completed = step0
    rng_after = _rng_state(sample_gen, objective_gen, device=device)
    bad_evals = 0
    pending: dict | None = None  # the row of a step whose update is applied but not yet recorded

    def checkpoint(path: Path) -> Path:
        return save_checkpoint(_payload(model, optimizer, completed, history, rng_after,
                                        model_config, config, tokenizer, best), path)

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step0, disable=not config.progress, desc="train",
               unit="step", leave=True)
    model.train()
    try:
        for step in range(step0 + 1, config.steps + 1):
            pending = None
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum = 0.0
            for _ in range(config.grad_accum):
                x, y = sampler.sample()  # (B, T), (B, T)
                with autocast():
                    loss = objective(forward_model, x, y, ctx)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    path = None
                    if folder is not None:  # the state before this step is still finite
                        path = run.checkpoint_path = checkpoint(folder / checkpoint_name(completed))
                    raise TrainingDiverged(
                        f"the training loss became {loss_value} at step {step} (lr={lr:.3g}). "
                        f"History up to step {completed} is in .run.history"
                        + (f"; the last good state is saved at {path}" if path else "")
                        + ". Try a lower lr, a longer warmup or gradient clipping.", run)
                loss_sum += loss_value
                loss = loss / config.grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            row = {"step": step, "tokens": step * tokens_per_step, "lr": lr,
                   "train_loss": loss_sum / config.grad_accum, "grad_norm": grad_norm}
            pending = row  # the update is applied: from here on this step counts
            if step % config.eval_every == 0 or step == config.steps:
                row["val_loss"] = evaluate(model, val_batches, config.objective, eval_ctx, autocast,
                                           config.seed + 4)
                row["eval_train_loss"] = evaluate(model, train_batches, config.objective, eval_ctx,
                                                  autocast, config.seed + 4)
            row["seconds"] = elapsed0 + time.perf_counter() - t0
            history.append(row)
            pending = None
            completed = step
            rng_after = _rng_state(sample_gen, objective_gen, device=device)
            if "val_loss" in row:
                bar.set_postfix(val_loss=f"{row['val_loss']:.3f}")
                if row["val_loss"] < best["val_loss"]:
                    best = {"val_loss": row["val_loss"], "step": step}
                    bad_evals = 0
                    if config.keep_best:
                        run.best_path = checkpoint(folder / "best.pt")
                else:
                    bad_evals += 1
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                run.checkpoint_path = checkpoint(folder / checkpoint_name(step))
            bar.update(1)
            if callback is not None:
                callback(row)
            if config.patience and bad_evals >= config.patience:
                run.stopped_early = True
                break
        if folder is not None:
            run.checkpoint_path = checkpoint(folder / checkpoint_name(completed))
    except KeyboardInterrupt:
        if pending is not None:  # stopped during evaluation: keep the applied step, unevaluated
            pending = {k: v for k, v in pending.items() if k not in ("val_loss", "eval_train_loss")}
            pending["seconds"] = elapsed0 + time.perf_counter() - t0
            history.append(pending)
            completed = pending["step"]
            rng_after = _rng_state(sample_gen, objective_gen, device=device)
        # interrupted before an update was applied: that step is simply not counted
        run.interrupted = True
        target = folder or cache_dir() / "interrupted"
        run.checkpoint_path = checkpoint(target / checkpoint_name(completed))
        print(f"Interrupted after step {completed}: history kept in run.history, checkpoint "
              f"written to {run.checkpoint_path} (resume with train(..., resume=that_path)).")
    finally:
        bar.close()
    if config.keep_best and run.best_path is None and (folder / "best.pt").exists():
        run.best_path = folder / "best.pt"
    return run


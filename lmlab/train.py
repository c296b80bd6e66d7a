"""The one training loop.

    for step in 1 .. steps:
        lr <- schedule(step)
        g <- (1/A) sum_{a=1..A} grad L(batch_a)        (A = grad_accum micro-batches)
        g <- g * min(1, clip / ||g||)                   (global-norm clipping)
        theta <- optimizer(theta, g, lr)                (only if L and ||g|| are finite)
        every eval_every steps: validation loss on fixed batches

Batches are drawn on the device, matmuls autocast to bf16 on CUDA, and everything a learner did
survives (README, "What survives what"; each promise is a test):

* A NaN/inf loss or gradient norm is caught before the update is applied: :class:`TrainingDiverged`
  carries the history, and with a checkpoint folder the last good state (every tensor finite) is
  saved there.
* Ctrl-C (the notebook's stop button) only asks the loop to stop: it stops at the next step
  boundary, writes a checkpoint holding everything the rest of the run depends on (weights,
  optimizer, RNG states, history, best loss, early-stopping count, GradScaler) and returns the
  partial :class:`Run`; ``train(..., resume=path)`` then continues exactly on the CPU, and within
  floating-point tolerance on a GPU (its attention backward is not deterministic). A second Ctrl-C
  within 2 s stops at once and raises :class:`TrainingInterrupted`: the step in flight is lost.
* Resuming checks the checkpoint's configs against the new ones and refuses a change of meaning.
* A model and objective that do not fit, or an unusable checkpoint folder, fail before step 1.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import RNG_KEY, checkpoint_name, load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import BatchSampler, Corpus
from .device import SEED_OFFSETS, autocast_context, autocast_dtype, compile_model, pick_device
from .distributed import DistContext, sync_gradients
from .evaluation import eval_batches, eval_context, evaluate
from .history import RunHistory
from .objectives import OBJECTIVES, ObjectiveContext, check_objective_fits
from .optim import build_optimizer, lr_at, set_lr
from .paths import cache_dir
from .version import __version__


@dataclass
class Run(RunHistory):
    """What a training run produced: the model, its history rows and where checkpoints went
    (``evals``, ``column``, ``final_val_loss``, ``best_val_loss`` from :class:`RunHistory`)."""

    model: nn.Module
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    checkpoint_path: Path | None = None
    best_path: Path | None = None
    interrupted: bool = False
    stopped_early: bool = False


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the update was not applied.
    ``.run`` holds the history up to the last good step."""

    def __init__(self, message: str, run: Run):
        super().__init__(message)
        self.run = run
        self.history = run.history


class TrainingInterrupted(KeyboardInterrupt):
    """A second Ctrl-C stopped training at once. ``.run`` holds the run up to the last completed
    step; the step that was in flight is lost."""

    def __init__(self, message: str, run: Run):
        super().__init__(message)
        self.run = run
        self.history = run.history


FORCE_STOP_WINDOW_S = 2.0
"""A second Ctrl-C within this many seconds of the first stops training at once."""


class _StopRequest:
    """SIGINT handler for the duration of :func:`train` (main thread only; the previous handler is
    restored on exit). The first Ctrl-C sets ``requested``, which the loop reads at each step
    boundary; a second one within ``FORCE_STOP_WINDOW_S`` raises ``KeyboardInterrupt``."""

    def __init__(self) -> None:
        self.requested = False
        self.forced = False
        self._first = -math.inf
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested and now - self._first < FORCE_STOP_WINDOW_S:
            self.forced = True
            raise KeyboardInterrupt("second Ctrl-C: training stops at once, the step in flight "
                                    "is not saved")
        self.requested = True
        self._first = now
        print(f"Stopping after the current step and writing a checkpoint (press Ctrl-C again "
              f"within {FORCE_STOP_WINDOW_S:g} s to stop at once, losing that step).",
              file=sys.stderr, flush=True)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.getsignal(signal.SIGINT)
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
            except ValueError:  # not the main interpreter: Ctrl-C keeps its usual meaning
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)


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


CHECKPOINT_FORMAT = "lmlab-checkpoint-2"


def _payload(model, optimizer, scaler, step, history, rng, model_config, config, tokenizer, best,
             bad_evals) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "lmlab_version": __version__,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        RNG_KEY: rng,
        "history": [dict(r) for r in history],
        "best": dict(best),
        "loop": {"bad_evals": bad_evals},
        "model_config": dataclasses.asdict(model_config) if model_config else None,
        "train_config": dataclasses.asdict(config),
        "tokenizer": tokenizer.state_dict() if tokenizer is not None else None,
    }


def _all_finite(obj) -> bool:
    """True when every floating-point tensor inside ``obj`` (dicts, lists) is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "checkpoint_dir", "keep_best",
                     "progress", "device", "compile")
"""TrainConfig fields that may differ between a checkpoint and the run resuming it: when to
evaluate and save, what to show, where to run. ``steps`` may only grow (the schedule is then
stretched to the new length). Every other field changes what the run means and is refused."""


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _resume_conflicts(state: dict, model_config: ModelConfig, config: TrainConfig) -> list[str]:
    """One line ``Config.field: old -> new`` per refused difference between checkpoint and run."""
    conflicts = []
    saved = state.get("model_config") or {}
    for name, new in dataclasses.asdict(model_config).items():
        if name in saved and _plain(saved[name]) != _plain(new):
            conflicts.append(f"ModelConfig.{name}: {saved[name]!r} -> {new!r}")
    saved = state.get("train_config") or {}
    for name, new in dataclasses.asdict(config).items():
        if name in saved and name not in RESUMABLE_CHANGES and _plain(saved[name]) != _plain(new):
            conflicts.append(f"TrainConfig.{name}: {saved[name]!r} -> {new!r}")
    step = int(state["step"])
    if config.steps < step:
        conflicts.append(f"TrainConfig.steps: {saved.get('steps')!r} -> {config.steps!r} (below "
                         f"the checkpoint's step {step}: steps may only grow)")
    return conflicts


def _check_checkpoint_folder(folder: Path) -> None:
    """Fail before step 1, not at the first save, when ``folder`` cannot hold checkpoints."""
    problem = None
    if folder.exists() and not folder.is_dir():
        problem = "it is a file, not a folder"
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            problem = f"it cannot be created or written to ({err.strerror or err})"
    if problem:
        raise ValueError(f"TrainConfig.checkpoint_dir={str(folder)!r} is unusable: {problem}. "
                         "Pass a folder you can write to (it is created if missing).")


def _check_fits(model_config: ModelConfig, config: TrainConfig, tokenizer) -> None:
    check_objective_fits(config.objective, model_config.causal)
    if tokenizer is not None and model_config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"ModelConfig.vocab_size={model_config.vocab_size} is smaller than the corpus "
            f"tokenizer's vocabulary ({tokenizer.vocab_size} ids, special tokens included): ids "
            f">= {model_config.vocab_size} would have no embedding. Build the model with "
            f"vocab_size=corpus.tokenizer.vocab_size.")


def train(model: nn.Module, corpus: Corpus, config: TrainConfig, resume: str | Path | None = None,
          callback: Callable[[dict], None] | None = None, *,
          dist: DistContext | None = None) -> Run:
    """Train ``model`` on ``corpus`` as ``config`` says; returns a :class:`Run`.

    ``resume``: a checkpoint path; training continues from its step with its model, optimizer,
    GradScaler and RNG states, history, best loss and early-stopping count, so an
    interrupted-then-resumed run equals an uninterrupted one: exactly on the CPU, within
    floating-point tolerance on a GPU. The checkpoint's configs must match the model's and
    ``config``, except the fields in :data:`RESUMABLE_CHANGES` (``steps`` upward, ``eval_every``,
    ``checkpoint_every``, ``checkpoint_dir``, ``keep_best``, ``progress``, ``device``,
    ``compile``); otherwise a ValueError lists every differing field as ``old -> new``.

    Ctrl-C stops at the next step boundary (see the module docstring); the returned run has
    ``interrupted=True`` and ``checkpoint_path`` set, in ``checkpoint_dir`` or, without one, in a
    folder of its own under ``<cache>/interrupted/``. ``callback(row)`` is called after every
    step with that step's history row (raising KeyboardInterrupt there stops like Ctrl-C).

    ``dist``: this process's place in a data-parallel run under torchrun
    (:func:`lmlab.distributed.from_environment`); ``None`` trains in one process.
    """
    with _StopRequest() as stop:  # first thing: a Ctrl-C during the setup stops cleanly too
        return _train(model, corpus, config, resume, callback, stop, dist)


def _train(model: nn.Module, corpus: Corpus, config: TrainConfig, resume: str | Path | None,
           callback: Callable[[dict], None] | None, stop: _StopRequest,
           dist: DistContext | None) -> Run:
    # --- data parallel (dist): this rank's device
    device = dist.device if dist is not None else pick_device(config.device)
    model_config = getattr(model, "config", None)
    model_config = model_config if isinstance(model_config, ModelConfig) else None
    if model_config is None:
        raise ValueError("train() needs a model whose .config is a ModelConfig (for block_size).")
    tokenizer = corpus.tokenizer
    _check_fits(model_config, config, tokenizer)
    folder = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if folder is not None:
        _check_checkpoint_folder(folder)
    model.to(device)
    block_size = model_config.block_size

    sample_gen = torch.Generator(device=device).manual_seed(config.seed)
    # --- data parallel (dist): per-rank objective randomness, this rank's rows of each batch --
    seed_offset = dist.seed_offset if dist is not None else 0
    objective_gen = torch.Generator(device=device).manual_seed(
        config.seed + SEED_OFFSETS["objective"] + seed_offset)
    eval_gen = torch.Generator(device=device)
    if dist is not None:
        sampler = dist.sampler(corpus.train, block_size, config.batch_size, sample_gen)
    else:
        sampler = BatchSampler(corpus.train, block_size, config.batch_size, device, sample_gen)
    val_batches = eval_batches(corpus, block_size, config, "val", device)
    train_batches = eval_batches(corpus, block_size, config, "train", device)
    ctx = ObjectiveContext(tokenizer, objective_gen, config.label_smoothing, config.mask_rate,
                           config.pair_weight, pair_text=corpus.train)  # NSP/SOP line pairs
    eval_ctx = eval_context(corpus, config, "val", eval_gen)
    eval_train_ctx = eval_context(corpus, config, "train", eval_gen)
    eval_seed = config.seed + SEED_OFFSETS["eval_objective"]
    objective = OBJECTIVES[config.objective].loss
    optimizer = build_optimizer(model, config, device)
    amp_dtype = autocast_dtype(device, config.dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast():
        return autocast_context(device, amp_dtype)

    history: list[dict] = []
    best = {"val_loss": math.inf, "step": 0}
    step0 = 0
    bad_evals = 0
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)  # RNG states stay on the CPU
        conflicts = _resume_conflicts(state, model_config, config)
        if conflicts:
            raise ValueError(
                f"cannot resume from {resume}: the run would not continue the one saved there.\n  "
                + "\n  ".join(conflicts) + "\nOnly " + ", ".join(RESUMABLE_CHANGES)
                + " may change on resume (steps only upward); start a new run to change the rest.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state[RNG_KEY], sample_gen, objective_gen, device=device)
        if dist is not None:  # --- data parallel (dist): ranks > 0 reseed their own randomness
            dist.reseed_after_resume(objective_gen, config.seed, int(state["step"]))
        history = [dict(r) for r in state["history"]]
        best = dict(state.get("best") or best)
        bad_evals = int((state.get("loop") or {}).get("bad_evals", 0))
        step0 = int(state["step"])
        stopped = bool(config.patience) and bad_evals >= config.patience
        if step0 >= config.steps or stopped:
            return Run(model, config, history, checkpoint_path=Path(resume), stopped_early=stopped)
    else:
        torch.manual_seed(config.seed + seed_offset)  # dropout draws: same seed, same run

    # --- data parallel (dist): DDP runs the forward; `model` (unwrapped) is what is saved
    forward_model = dist.wrap(model) if dist is not None else model
    forward_model = compile_model(forward_model, config.compile,
                                  (model_config, config.batch_size, config.objective))
    params = [p for p in model.parameters() if p.requires_grad]
    run = Run(model, config, history)
    tokens_per_step = config.batch_size * block_size * config.grad_accum
    clip = config.grad_clip if config.grad_clip else math.inf
    elapsed0 = history[-1]["seconds"] if history else 0.0
    t0 = time.perf_counter()
    completed = step0  # the last step whose update and row are both recorded
    rng_after = _rng_state(sample_gen, objective_gen, device=device)
    updating = False  # True from optimizer.step() until that step's bookkeeping is done

    def checkpoint(path: Path) -> Path:
        if dist is not None and not dist.is_main:  # --- data parallel (dist): rank 0 writes
            return path
        return save_checkpoint(_payload(model, optimizer, scaler, completed, history, rng_after,
                                        model_config, config, tokenizer, best, bad_evals), path)

    def diverged(step: int, lr: float, what: str) -> TrainingDiverged:
        optimizer.zero_grad(set_to_none=True)
        note = ""
        if folder is not None and (dist is None or dist.is_main):  # the state before the update
            payload = _payload(model, optimizer, scaler, completed, history, rng_after,
                               model_config, config, tokenizer, best, bad_evals)
            if _all_finite(payload["model"]) and _all_finite(payload["optimizer"]):
                run.checkpoint_path = save_checkpoint(payload, folder / checkpoint_name(completed))
                note = f"; the last good state is saved at {run.checkpoint_path}"
            else:
                note = "; the weights were already non-finite, so no checkpoint was written"
        return TrainingDiverged(
            f"the {what} at step {step} (lr={lr:.3g}); the update was not applied. History up "
            f"to step {completed} is in .run.history{note}. Try a lower lr, a longer warmup or "
            "gradient clipping.", run)

    show_progress = config.progress and (dist is None or dist.is_main)  # --- dist: rank 0
    bar = tqdm(total=config.steps, initial=step0, disable=not show_progress, desc="train",
               unit="step", leave=True)
    model.train()
    try:
        for step in range(step0 + 1, config.steps + 1):
            # --- data parallel (dist): every rank stops at the same step boundary
            if stop.requested if dist is None else dist.any(stop.requested):
                raise KeyboardInterrupt
            lr = lr_at(step, config)
            set_lr(optimizer, lr)
            loss_sum = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                x, y = sampler.sample()  # (B, T), (B, T)
                # --- data parallel (dist): all-reduce gradients on the last micro-batch only,
                # and record the loss of the global batch (the mean over ranks)
                with autocast(), sync_gradients(forward_model, micro, config.grad_accum):
                    loss = objective(forward_model, x, y, ctx)
                loss_sum += loss.detach().float()
                loss = loss / config.grad_accum
                scaler.scale(loss).backward()  # scale(loss) is loss when fp16 is off
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            # one host-device sync per step: the loss and the norm decide whether to update
            stats = torch.stack([loss_sum / config.grad_accum, norm.float()])
            if dist is not None:  # --- data parallel (dist): the global batch's mean loss; the
                stats[0] = dist.mean(stats[0])  # norms agree already (gradients are averaged)
            train_loss, grad_norm = stats.tolist()
            if not math.isfinite(train_loss):
                raise diverged(step, lr, f"training loss became {train_loss}")
            # (with fp16 the scaler skips a step whose gradient overflowed, and lowers its scale)
            if not math.isfinite(grad_norm) and not scaler.is_enabled():
                raise diverged(step, lr, f"gradient norm became {grad_norm}")
            updating = True
            scaler.step(optimizer)  # optimizer.step() when fp16 is off
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            row = {"step": step, "tokens": step * tokens_per_step, "lr": lr,
                   "train_loss": train_loss, "grad_norm": grad_norm}
            if step % config.eval_every == 0 or step == config.steps:
                if dist is None or dist.is_main:  # --- data parallel (dist): rank 0 evaluates
                    row["val_loss"] = evaluate(model, val_batches, config.objective, eval_ctx,
                                               autocast, eval_seed)
                    row["eval_train_loss"] = evaluate(model, train_batches, config.objective,
                                                      eval_train_ctx, autocast, eval_seed)
                if dist is not None:
                    dist.share(row, ("val_loss", "eval_train_loss"))
            row["seconds"] = elapsed0 + time.perf_counter() - t0
            history.append(row)
            improved = "val_loss" in row and row["val_loss"] < best["val_loss"]
            if improved:
                best = {"val_loss": row["val_loss"], "step": step}
                bad_evals = 0
            elif "val_loss" in row:
                bad_evals += 1
            completed = step
            rng_after = _rng_state(sample_gen, objective_gen, device=device)
            updating = False  # model, optimizer, RNGs and bookkeeping agree again: step done
            if "val_loss" in row:
                bar.set_postfix(val_loss=f"{row['val_loss']:.3f}")
            if improved and config.keep_best:
                run.best_path = checkpoint(folder / "best.pt")
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
    except KeyboardInterrupt as err:
        run.interrupted = True
        if updating:  # weights, optimizer and bookkeeping disagree: nothing safe to save
            raise TrainingInterrupted(
                f"Stopped at once during the update of step {completed + 1}: that step is "
                f"lost and no checkpoint was written for it (the model now holds a partial "
                f"update). History up to step {completed} is in .run.history; the last "
                f"checkpoint is {run.checkpoint_path or 'none'}.", run) from err
        target = folder or Path(tempfile.mkdtemp(
            prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=_interrupted_root()))
        run.checkpoint_path = checkpoint(target / checkpoint_name(completed))
        if stop.forced:
            raise TrainingInterrupted(
                f"Stopped at once: the step in flight (step {completed + 1}) is not saved. "
                f"Steps up to {completed} are in .run.history and in the checkpoint "
                f"{run.checkpoint_path} (resume with train(..., resume=that_path)).",
                run) from err
        print(f"Interrupted after step {completed}: history kept in run.history, checkpoint "
              f"written to {run.checkpoint_path} (resume with train(..., resume=that_path)).")
    finally:
        bar.close()
    if config.keep_best and run.best_path is None and (folder / "best.pt").exists():
        run.best_path = folder / "best.pt"
    return run


def _interrupted_root() -> Path:
    """Where runs without a checkpoint folder put the checkpoint of an interrupt: one new
    sub-folder per run, so two interrupted runs never share (or overwrite) a file."""
    root = cache_dir() / "interrupted"
    root.mkdir(parents=True, exist_ok=True)
    return root

"""The one training loop.

    for step in 1 .. steps:
        lr <- schedule(step)                            lr_at, set_lr
        g <- (1/A) sum_{a=1..A} grad L(batch_a)        gradients (A = grad_accum micro-batches)
        g <- g * min(1, clip / ||g||)                   gradients (global-norm clipping)
        theta <- optimizer(theta, g, lr)                check_finite, update (only if L and ||g||
                                                        are finite)
        every eval_every steps: validation loss on fixed batches           evaluate, record

(the names on the right are the methods of ``_Loop`` that :func:`train` runs, in that order).
L is the objective's loss, or the one ``train(..., loss_fn=...)`` passes in its place (the
distillation loss of :func:`lmlab.distill.distill_train`); evaluation always scores the objective.

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
          dist: DistContext | None = None, loss_fn: Callable | None = None) -> Run:
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

    ``loss_fn``: the training loss in place of the objective's, with the signature of
    :attr:`lmlab.objectives.Objective.loss`, ``(model, x (B, T), y (B, T), ctx) -> scalar``
    (:func:`lmlab.distill.distill_train` passes the distillation loss). Evaluation still scores
    ``config.objective``, so ``val_loss`` stays comparable with runs trained on it. A checkpoint
    does not record ``loss_fn``: resume with the same one.
    """
    with _StopRequest() as stop:  # first thing: a Ctrl-C during the setup stops cleanly too
        # every check runs here, before step 1
        loop = _Loop(model, corpus, config, dist, loss_fn)
        if resume is not None:
            finished = loop.resume(resume)
            if finished is not None:  # the checkpoint's run had already ended
                return finished
        else:
            torch.manual_seed(config.seed + loop.seed_offset)  # dropout draws: same seed, same run
        return loop.fit(callback, stop)


class _Loop:
    """One call of :func:`train`: its parts (set up and checked in ``__init__``), the state a step
    changes (history, best loss, early-stopping count, RNG states), and one method per line of
    the module docstring's pseudo-code, which :meth:`fit` calls in that order."""

    def __init__(self, model: nn.Module, corpus: Corpus, config: TrainConfig,
                 dist: DistContext | None, loss_fn: Callable | None = None):
        # --- data parallel (dist): this rank's device
        device = dist.device if dist is not None else pick_device(config.device)
        model_config = getattr(model, "config", None)
        if not isinstance(model_config, ModelConfig):
            raise ValueError("train() needs a model whose .config is a ModelConfig (for "
                             "block_size).")
        _check_fits(model_config, config, corpus.tokenizer)
        self.folder = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        if self.folder is not None:
            _check_checkpoint_folder(self.folder)
        model.to(device)
        self.model, self.model_config, self.config = model, model_config, config
        self.tokenizer, self.dist, self.device = corpus.tokenizer, dist, device
        self.is_main = dist is None or dist.is_main  # --- data parallel (dist): rank 0 writes
        block_size = model_config.block_size

        self.sample_gen = torch.Generator(device=device).manual_seed(config.seed)
        # --- data parallel (dist): per-rank objective randomness, this rank's rows of each batch
        self.seed_offset = dist.seed_offset if dist is not None else 0
        self.objective_gen = torch.Generator(device=device).manual_seed(
            config.seed + SEED_OFFSETS["objective"] + self.seed_offset)
        if dist is not None:
            self.sampler = dist.sampler(corpus.train, block_size, config.batch_size,
                                        self.sample_gen)
        else:
            self.sampler = BatchSampler(corpus.train, block_size, config.batch_size, device,
                                        self.sample_gen)
        eval_gen = torch.Generator(device=device)  # reseeded at every evaluation
        self.eval_sets = {  # key in the row: (fixed batches, objective context)
            key: (eval_batches(corpus, block_size, config, split, device),
                  eval_context(corpus, config, split, eval_gen))
            for key, split in (("val_loss", "val"), ("eval_train_loss", "train"))}
        self.eval_seed = config.seed + SEED_OFFSETS["eval_objective"]
        self.ctx = ObjectiveContext(corpus.tokenizer, self.objective_gen, config.label_smoothing,
                                    config.mask_rate, config.pair_weight,
                                    pair_text=corpus.train)  # NSP/SOP line pairs
        # the training loss L(model, x, y, ctx): the objective's, or the caller's (distillation)
        self.loss = loss_fn if loss_fn is not None else OBJECTIVES[config.objective].loss
        self.optimizer = build_optimizer(model, config, device)
        self.amp_dtype = autocast_dtype(device, config.dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.clip = config.grad_clip if config.grad_clip else math.inf

        self.history: list[dict] = []
        self.best = {"val_loss": math.inf, "step": 0}
        self.bad_evals = 0
        self.step0 = 0
        self.completed = 0  # the last step whose update and row are both recorded
        self.updating = False  # True from the optimizer step until that step's row is recorded
        self.run = Run(model, config, self.history)

    def autocast(self):
        return autocast_context(self.device, self.amp_dtype)

    def resume(self, path: str | Path) -> Run | None:
        """Load everything the rest of the run depends on from the checkpoint ``path``; returns
        the finished :class:`Run` when the checkpoint's run had already ended, else None."""
        config = self.config
        state = load_checkpoint(path, map_location=self.device)  # RNG states stay on the CPU
        conflicts = _resume_conflicts(state, self.model_config, config)
        if conflicts:
            raise ValueError(
                f"cannot resume from {path}: the run would not continue the one saved there.\n  "
                + "\n  ".join(conflicts) + "\nOnly " + ", ".join(RESUMABLE_CHANGES)
                + " may change on resume (steps only upward); start a new run to change the rest.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state[RNG_KEY], self.sample_gen, self.objective_gen, device=self.device)
        if self.dist is not None:  # --- data parallel (dist): ranks > 0 reseed their own
            self.dist.reseed_after_resume(self.objective_gen, config.seed, int(state["step"]))
        self.history = [dict(r) for r in state["history"]]
        self.run = Run(self.model, config, self.history)
        self.best = dict(state.get("best") or self.best)
        self.bad_evals = int((state.get("loop") or {}).get("bad_evals", 0))
        self.step0 = self.completed = int(state["step"])
        stopped = bool(config.patience) and self.bad_evals >= config.patience
        if self.step0 >= config.steps or stopped:
            return Run(self.model, config, self.history, checkpoint_path=Path(path),
                       stopped_early=stopped)
        return None

    def fit(self, callback: Callable[[dict], None] | None, stop: _StopRequest) -> Run:
        """Steps ``step0 + 1 .. config.steps``, as the module docstring's pseudo-code."""
        config, run, dist = self.config, self.run, self.dist
        # --- data parallel (dist): DDP runs the forward; `model` (unwrapped) is what is saved
        forward_model = dist.wrap(self.model) if dist is not None else self.model
        self.forward_model = compile_model(forward_model, config.compile,
                                           (self.model_config, config.batch_size,
                                            config.objective))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        tokens_per_step = config.batch_size * self.model_config.block_size * config.grad_accum
        elapsed0 = self.history[-1]["seconds"] if self.history else 0.0
        t0 = time.perf_counter()
        self.rng_after = _rng_state(self.sample_gen, self.objective_gen, device=self.device)
        bar = tqdm(total=config.steps, initial=self.step0, desc="train", unit="step", leave=True,
                   disable=not (config.progress and self.is_main))
        self.model.train()
        try:
            for step in range(self.step0 + 1, config.steps + 1):
                # --- data parallel (dist): every rank stops at the same step boundary
                if stop.requested if dist is None else dist.any(stop.requested):
                    raise KeyboardInterrupt
                lr = lr_at(step, config)
                set_lr(self.optimizer, lr)
                train_loss, grad_norm = self.gradients()
                self.check_finite(step, lr, train_loss, grad_norm)
                self.update()
                row = {"step": step, "tokens": step * tokens_per_step, "lr": lr,
                       "train_loss": train_loss, "grad_norm": grad_norm}
                if step % config.eval_every == 0 or step == config.steps:
                    self.evaluate(row)
                row["seconds"] = elapsed0 + time.perf_counter() - t0
                improved = self.record(step, row)
                if "val_loss" in row:
                    bar.set_postfix(val_loss=f"{row['val_loss']:.3f}")
                self.save_checkpoints(step, improved)
                bar.update(1)
                if callback is not None:
                    callback(row)
                if config.patience and self.bad_evals >= config.patience:
                    run.stopped_early = True
                    break
            if self.folder is not None:
                run.checkpoint_path = self.checkpoint(self.folder / checkpoint_name(self.completed))
        except KeyboardInterrupt as err:
            self.stop_after_interrupt(err, stop)
        finally:
            bar.close()
        if config.keep_best and run.best_path is None and (self.folder / "best.pt").exists():
            run.best_path = self.folder / "best.pt"
        return run

    def gradients(self) -> tuple[float, float]:
        """g <- (1/A) sum_a grad L(batch_a), then clipped to ||g|| <= grad_clip. Returns the
        batch's mean loss and ||g|| before clipping, read back in one host-device sync."""
        config, dist = self.config, self.dist
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum):
            x, y = self.sampler.sample()  # (B, T), (B, T)
            # --- data parallel (dist): all-reduce gradients on the last micro-batch only, and
            # record the loss of the global batch (the mean over ranks)
            with self.autocast(), sync_gradients(self.forward_model, micro, config.grad_accum):
                loss = self.loss(self.forward_model, x, y, self.ctx)
            loss_sum += loss.detach().float()
            loss = loss / config.grad_accum
            self.scaler.scale(loss).backward()  # scale(loss) is loss when fp16 is off
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        # one host-device sync per step: the loss and the norm decide whether to update
        stats = torch.stack([loss_sum / config.grad_accum, norm.float()])
        if dist is not None:  # --- data parallel (dist): the global batch's mean loss; the
            stats[0] = dist.mean(stats[0])  # norms agree already (gradients are averaged)
        train_loss, grad_norm = stats.tolist()
        return train_loss, grad_norm

    def check_finite(self, step: int, lr: float, train_loss: float, grad_norm: float) -> None:
        """Only if L and ||g|| are finite: otherwise :class:`TrainingDiverged`, nothing applied.
        With fp16 the scaler itself skips a step whose gradient overflowed (and lowers its
        scale), so a non-finite norm is not divergence there."""
        if not math.isfinite(train_loss):
            raise self.diverged(step, lr, f"training loss became {train_loss}")
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise self.diverged(step, lr, f"gradient norm became {grad_norm}")

    def update(self) -> None:
        """theta <- optimizer(theta, g, lr): through the GradScaler, a plain optimizer.step()
        when fp16 is off."""
        self.updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def evaluate(self, row: dict) -> None:
        """Validation loss (and the loss on fixed training batches) into ``row``."""
        if self.is_main:  # --- data parallel (dist): rank 0 evaluates
            for key, (batches, ctx) in self.eval_sets.items():
                row[key] = evaluate(self.model, batches, self.config.objective, ctx,
                                    self.autocast, self.eval_seed)
        if self.dist is not None:
            self.dist.share(row, tuple(self.eval_sets))

    def record(self, step: int, row: dict) -> bool:
        """Append ``row``, update the best loss and the early-stopping count; from here model,
        optimizer, RNG states and bookkeeping agree again. Returns whether val_loss improved."""
        self.history.append(row)
        improved = "val_loss" in row and row["val_loss"] < self.best["val_loss"]
        if improved:
            self.best = {"val_loss": row["val_loss"], "step": step}
            self.bad_evals = 0
        elif "val_loss" in row:
            self.bad_evals += 1
        self.completed = step
        self.rng_after = _rng_state(self.sample_gen, self.objective_gen, device=self.device)
        self.updating = False
        return improved

    def save_checkpoints(self, step: int, improved: bool) -> None:
        config, run = self.config, self.run
        if improved and config.keep_best:
            run.best_path = self.checkpoint(self.folder / "best.pt")
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            run.checkpoint_path = self.checkpoint(self.folder / checkpoint_name(step))

    def payload(self) -> dict:
        return _payload(self.model, self.optimizer, self.scaler, self.completed, self.history,
                        self.rng_after, self.model_config, self.config, self.tokenizer, self.best,
                        self.bad_evals)

    def checkpoint(self, path: Path) -> Path:
        if not self.is_main:  # --- data parallel (dist): rank 0 writes
            return path
        return save_checkpoint(self.payload(), path)

    def diverged(self, step: int, lr: float, what: str) -> TrainingDiverged:
        self.optimizer.zero_grad(set_to_none=True)
        note = ""
        if self.folder is not None and self.is_main:  # the state before the update
            payload = self.payload()
            if _all_finite(payload["model"]) and _all_finite(payload["optimizer"]):
                self.run.checkpoint_path = save_checkpoint(
                    payload, self.folder / checkpoint_name(self.completed))
                note = f"; the last good state is saved at {self.run.checkpoint_path}"
            else:
                note = "; the weights were already non-finite, so no checkpoint was written"
        return TrainingDiverged(
            f"the {what} at step {step} (lr={lr:.3g}); the update was not applied. History up "
            f"to step {self.completed} is in .run.history{note}. Try a lower lr, a longer "
            "warmup or gradient clipping.", self.run)

    def stop_after_interrupt(self, err: KeyboardInterrupt, stop: _StopRequest) -> None:
        """Ctrl-C: save the last completed step and return, or raise
        :class:`TrainingInterrupted` when the stop was forced or came mid-update."""
        run, completed = self.run, self.completed
        run.interrupted = True
        if self.updating:  # weights, optimizer and bookkeeping disagree: nothing safe to save
            raise TrainingInterrupted(
                f"Stopped at once during the update of step {completed + 1}: that step is "
                f"lost and no checkpoint was written for it (the model now holds a partial "
                f"update). History up to step {completed} is in .run.history; the last "
                f"checkpoint is {run.checkpoint_path or 'none'}.", run) from err
        target = self.folder or Path(tempfile.mkdtemp(
            prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=_interrupted_root()))
        run.checkpoint_path = self.checkpoint(target / checkpoint_name(completed))
        if stop.forced:
            raise TrainingInterrupted(
                f"Stopped at once: the step in flight (step {completed + 1}) is not saved. "
                f"Steps up to {completed} are in .run.history and in the checkpoint "
                f"{run.checkpoint_path} (resume with train(..., resume=that_path)).",
                run) from err
        print(f"Interrupted after step {completed}: history kept in run.history, checkpoint "
              f"written to {run.checkpoint_path} (resume with train(..., resume=that_path)).")


def _interrupted_root() -> Path:
    """Where runs without a checkpoint folder put the checkpoint of an interrupt: one new
    sub-folder per run, so two interrupted runs never share (or overwrite) a file."""
    root = cache_dir() / "interrupted"
    root.mkdir(parents=True, exist_ok=True)
    return root

"""Configuration dataclasses for models and training runs.

Both are validated when constructed: a bad value raises ``ValueError`` naming the field, the value
that was given and what would be valid, so a typo in a notebook fails at the line that made it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from .objectives import OBJECTIVES

POSITIONAL_SCHEMES = ("learned", "sinusoidal", "rope", "none")
ATTENTION_BACKENDS = ("naive", "sdpa")
OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "nesterov", "muon")
SCHEDULES = ("constant", "cosine", "linear", "wsd")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _fail(cls: str, name: str, value: Any, expected: str) -> None:
    raise ValueError(f"{cls}.{name}={value!r} is invalid: expected {expected}.")


def _check_choice(cls: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        _fail(cls, name, value, "one of " + ", ".join(repr(c) for c in choices))


def _check_int(cls: str, name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        _fail(cls, name, value, f"an integer >= {minimum}" if maximum is None
              else f"an integer in [{minimum}, {maximum}]")


def _finite(value: Any) -> bool:
    """A real number (not a bool) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _check_real(
    cls: str, name: str, value: Any, low: float, high: float, *, closed_high: bool
) -> None:
    ok = _finite(value) and low <= value and (value <= high if closed_high else value < high)
    if not ok:
        bracket = "]" if closed_high else ")"
        _fail(cls, name, value, f"a number in [{low}, {high}{bracket}")


def _check_bool(cls: str, name: str, value: Any, meaning: str = "") -> None:
    if not isinstance(value, bool):
        _fail(cls, name, value, "True or False" + (f" ({meaning})" if meaning else ""))


SEED_MAX = 2**62
"""Largest seed: the loop seeds its generators with seed + small offsets, all within int64."""

_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class _Replaceable:
    def replace(self, **changes: Any):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelConfig(_Replaceable):
    """Shape and options of a :class:`lmlab.Transformer`.

    ``causal=True`` gives a GPT-style decoder (token t sees tokens <= t); ``causal=False`` a
    BERT-style bidirectional encoder. ``pos`` picks the positional scheme and ``attention`` the
    backend: ``naive`` is the explicit softmax(QK^T / sqrt(d_k)) V written out (it can return the
    weights), ``sdpa`` calls ``torch.nn.functional.scaled_dot_product_attention`` (flash on GPU).
    """

    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    causal: bool = True
    pos: str = "learned"
    attention: str = "sdpa"
    bias: bool = True
    mlp_ratio: int = 4
    tie_weights: bool = True
    init_std: float = 0.02
    scale_residual_init: bool = True

    def __post_init__(self) -> None:
        c = "ModelConfig"
        _check_int(c, "vocab_size", self.vocab_size, 2)
        _check_int(c, "block_size", self.block_size, 1)
        _check_int(c, "n_layer", self.n_layer, 1)
        _check_int(c, "n_head", self.n_head, 1)
        _check_int(c, "d_model", self.d_model, 1)
        _check_int(c, "mlp_ratio", self.mlp_ratio, 1)
        if self.d_model % self.n_head:
            divisors = [h for h in range(1, min(self.d_model, 1024) + 1) if self.d_model % h == 0]
            _fail(c, "d_model", self.d_model,
                  f"a multiple of n_head={self.n_head} (or choose n_head among {divisors[:12]})")
        if self.pos == "rope" and self.head_dim % 2:
            _fail(c, "d_model", self.d_model,
                  "d_model / n_head even, as RoPE rotates pairs of dims")
        _check_real(c, "dropout", self.dropout, 0.0, 1.0, closed_high=False)
        _check_real(c, "init_std", self.init_std, 0.0, math.inf, closed_high=False)
        _check_choice(c, "pos", self.pos, POSITIONAL_SCHEMES)
        _check_choice(c, "attention", self.attention, ATTENTION_BACKENDS)
        _check_bool(c, "causal", self.causal, "True: GPT-style, False: BERT-style")
        _check_bool(c, "bias", self.bias, "biases in linear layers and LayerNorms")
        _check_bool(c, "tie_weights", self.tie_weights, "share the embedding and output matrix")
        _check_bool(c, "scale_residual_init", self.scale_residual_init,
                    "scale residual projections by 1/sqrt(2 n_layer)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass(frozen=True)
class TrainConfig(_Replaceable):
    """Everything :func:`lmlab.train` needs besides the model and the corpus.

    The learning rate follows ``schedule`` after ``warmup_steps`` of linear warmup:
    ``cosine`` decays to ``min_lr`` along half a cosine, ``linear`` decays linearly, ``wsd``
    (warmup-stable-decay) holds ``lr`` and decays linearly over the last ``decay_fraction`` of the
    steps, ``constant`` holds it. ``min_lr=None`` means ``lr / 10``.
    ``keep_best`` saves ``best.pt`` whenever the validation loss improves; ``patience`` > 0 stops
    after that many evaluations without improvement (early stopping).
    ``grad_accum`` micro-batches of ``batch_size`` make one optimizer step. ``grad_clip`` is the
    max global L2 norm (``None`` or 0 disables clipping; the norm is still recorded).
    ``mask_rate`` is the masking (or span-corruption) rate of the MLM-family objectives and
    ``pair_weight`` the lambda in L = L_MLM + lambda * L_pair (see :mod:`lmlab.objectives`).
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float | None = None
    weight_decay: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    momentum: float = 0.9
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    objective: str = "clm"
    label_smoothing: float = 0.0
    mask_rate: float = 0.15
    pair_weight: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    keep_best: bool = False
    patience: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        c = "TrainConfig"
        _check_int(c, "steps", self.steps, 1)
        _check_int(c, "batch_size", self.batch_size, 1)
        if not (_finite(self.lr) and self.lr > 0):
            _fail(c, "lr", self.lr, "a positive learning rate such as 1e-3")
        if self.min_lr is not None:
            _check_real(c, "min_lr", self.min_lr, 0.0, self.lr, closed_high=True)
        _check_real(c, "weight_decay", self.weight_decay, 0.0, math.inf, closed_high=False)
        _check_int(c, "warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.steps:
            _fail(c, "warmup_steps", self.warmup_steps, f"at most steps={self.steps}")
        _check_choice(c, "schedule", self.schedule, SCHEDULES)
        _check_real(c, "decay_fraction", self.decay_fraction, 0.0, 1.0, closed_high=True)
        _check_choice(c, "optimizer", self.optimizer, OPTIMIZERS)
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(_finite(b) and 0 <= b < 1 for b in self.betas)):
            _fail(c, "betas", self.betas, "a pair (beta1, beta2) with each in [0, 1)")
        _check_real(c, "eps", self.eps, 0.0, math.inf, closed_high=False)
        _check_real(c, "momentum", self.momentum, 0.0, 1.0, closed_high=False)
        if self.grad_clip is not None:
            _check_real(c, "grad_clip", self.grad_clip, 0.0, math.inf, closed_high=False)
        _check_int(c, "grad_accum", self.grad_accum, 1)
        _check_choice(c, "objective", self.objective, tuple(OBJECTIVES))
        _check_real(c, "label_smoothing", self.label_smoothing, 0.0, 1.0, closed_high=False)
        _check_real(c, "mask_rate", self.mask_rate, 0.0, 1.0, closed_high=False)
        if self.mask_rate <= 0:
            _fail(c, "mask_rate", self.mask_rate, "a masking rate in (0, 1), e.g. 0.15")
        _check_real(c, "pair_weight", self.pair_weight, 0.0, math.inf, closed_high=False)
        _check_int(c, "eval_every", self.eval_every, 1)
        _check_int(c, "eval_batches", self.eval_batches, 1)
        _check_int(c, "seed", self.seed, 0, SEED_MAX)
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.fullmatch(self.device):
            _fail(c, "device", self.device, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        _check_choice(c, "dtype", self.dtype, DTYPES)
        _check_bool(c, "compile", self.compile, "torch.compile the model")
        _check_bool(c, "progress", self.progress, "show a progress bar")
        _check_bool(c, "keep_best", self.keep_best, "save best.pt at each new best val_loss")
        if self.checkpoint_dir is not None:
            if isinstance(self.checkpoint_dir, os.PathLike):  # kept as str: plain data to save
                object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
            if not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir.strip():
                _fail(c, "checkpoint_dir", self.checkpoint_dir,
                      "None or a folder path (a str or pathlib.Path)")
        _check_int(c, "checkpoint_every", self.checkpoint_every, 0)
        _check_int(c, "patience", self.patience, 0)
        if self.keep_best and not self.checkpoint_dir:
            _fail(c, "checkpoint_dir", self.checkpoint_dir,
                  "a folder path, since keep_best=True saves the best model there")
        if self.checkpoint_every and not self.checkpoint_dir:
            _fail(c, "checkpoint_dir", self.checkpoint_dir,
                  f"a folder path, since checkpoint_every={self.checkpoint_every} "
                  "asks for checkpoints")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

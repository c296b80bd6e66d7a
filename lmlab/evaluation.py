"""Scoring a model: the fixed batches a run is evaluated on, and the mean loss over them.

    val_loss        = mean over the fixed validation batches of L(model; x, y), in eval mode
    eval_train_loss = the same on fixed batches of the training text

The batches are drawn once from ``seed + SEED_OFFSETS["val_batches" | "train_batches"]`` and the
objective's randomness (MLM masks, pairs) is reseeded with ``seed + SEED_OFFSETS["eval_objective"]``
at every evaluation, so the same model always gets the same score: the training loop's rows and
:func:`validation_loss` on a saved model agree.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .config import TrainConfig
from .data import BatchSampler, Corpus
from .device import SEED_OFFSETS, autocast_context, autocast_dtype, pick_device
from .modes import eval_mode
from .objectives import OBJECTIVES, ObjectiveContext

SPLITS = {"val": "val_batches", "train": "train_batches"}
"""The evaluation splits and the seed offset (:data:`lmlab.device.SEED_OFFSETS`) of each."""


def _fixed_batches(data: torch.Tensor, block_size: int, batch_size: int, n: int, seed: int,
                   device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(data, block_size, batch_size, "cpu", g)
    return [tuple(t.to(device) for t in sampler.sample()) for _ in range(n)]


def eval_batches(corpus: Corpus, block_size: int, config: TrainConfig, split: str = "val",
                 device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed batches :func:`lmlab.train` scores: ``split="val"`` gives those of ``val_loss``,
    ``"train"`` those of ``eval_train_loss`` (``config.eval_batches`` batches of
    ``config.batch_size`` windows, drawn with seed
    ``config.seed + SEED_OFFSETS[SPLITS[split]]``)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: expected 'val' or 'train'.")
    data = corpus.val if split == "val" else corpus.train
    return _fixed_batches(data, block_size, config.batch_size, config.eval_batches,
                          config.seed + SEED_OFFSETS[SPLITS[split]], torch.device(device))


def eval_context(corpus: Corpus, config: TrainConfig, split: str,
                 generator: torch.Generator) -> ObjectiveContext:
    """The objective's context while scoring ``split``: no label smoothing, the run's masking
    rate and lambda, sentence pairs drawn from that split's text."""
    return ObjectiveContext(corpus.tokenizer, generator, 0.0, config.mask_rate, config.pair_weight,
                            pair_text=corpus.val if split == "val" else corpus.train)


@torch.no_grad()
def evaluate(model: nn.Module, batches, objective: str = "clm", ctx: ObjectiveContext | None = None,
             autocast=contextlib.nullcontext, seed: int = 0) -> float:
    """Mean loss of ``objective`` over ``batches`` in eval mode (no dropout); restores the mode.
    Randomness the objective needs (MLM masks) comes from a generator reseeded with ``seed``,
    so the same model always gets the same score."""
    loss = OBJECTIVES[objective].loss
    ctx = ctx if ctx is not None else ObjectiveContext(tokenizer=None)
    if ctx.generator is not None:
        ctx.generator.manual_seed(seed)
    total = 0.0
    with eval_mode(model):
        for x, y in batches:
            with autocast():
                total += float(loss(model, x, y, ctx))
    return total / len(batches)


@torch.no_grad()
def predict_probabilities(model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token probabilities p = softmax(model(x)) on ``batches`` of (x, y), in eval mode
    (restored afterwards): returns probs (N, V) and targets (N,), N = sum of B * T over the
    batches, on the CPU (what chapter 5's calibration reads)."""
    probs, targets = [], []
    with eval_mode(model):
        for x, y in batches:  # (B, T), (B, T)
            logits = model(x).float()  # (B, T, V)
            probs.append(torch.softmax(logits, dim=-1).flatten(0, 1).cpu())  # (B*T, V)
            targets.append(y.flatten().cpu())  # (B*T,)
    return torch.cat(probs), torch.cat(targets)


def validation_loss(model: nn.Module, corpus: Corpus, config: TrainConfig,
                    split: str = "val") -> float:
    """The loss :func:`lmlab.train` reports as ``val_loss`` (``split="val"``) or
    ``eval_train_loss`` (``"train"``) for this model: same fixed batches, device and autocast."""
    device = pick_device(config.device)
    model.to(device)
    batches = eval_batches(corpus, model.config.block_size, config, split, device)
    amp = autocast_dtype(device, config.dtype)
    ctx = eval_context(corpus, config, split, torch.Generator(device=device))
    return evaluate(model, batches, config.objective, ctx, lambda: autocast_context(device, amp),
                    config.seed + SEED_OFFSETS["eval_objective"])

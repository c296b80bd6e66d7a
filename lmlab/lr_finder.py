"""The learning-rate range test: one short run whose learning rate grows geometrically.

The test is Smith's (2017, section 3.3, the "LR range test"), who raised the learning rate
*linearly* over a few epochs. The geometric ramp used here, the bias-corrected smoothing and the
"a tenth of the minimum" reading are fast.ai's form of it (the library's ``lr_find``; Howard &
Gugger 2020, and Gugger's 2017 blog post "How do you find a good learning rate"):

    lr_i = lr_min (lr_max / lr_min)^(i / (steps - 1))           i = 0 .. steps - 1
    a_i = beta a_{i-1} + (1 - beta) loss_i;  smooth_i = a_i / (1 - beta^(i+1))   (a_{-1} = 0)

The run stops once smooth_i > stop_factor * min_{j<=i} smooth_j (or the loss is not finite). While
the learning rate is too small the loss barely moves; then it falls fastest; past the stable range
it shoots up. :func:`suggest_lr` turns the curve into a value. Results are kept in the experiment
cache (:func:`lmlab.experiments.cached_record`), keyed like
:func:`lmlab.experiments.run_experiment`'s runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ModelConfig, TrainConfig
from .data import BatchSampler, Corpus, char_corpus
from .device import SEED_OFFSETS, pick_device
from .experiments import cached_record, run_key
from .model import Transformer
from .objectives import OBJECTIVES, ObjectiveContext
from .optim import build_optimizer, set_lr

SUGGESTION_RULES = ("steepest", "min_over_10")


@dataclass
class RangeTest:
    """Learning rates tried, raw and smoothed losses (one per step run) and the suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    cached: bool = False

    @property
    def min_loss_lr(self) -> float:
        """The learning rate at which the smoothed loss was lowest."""
        return self.lrs[min(range(len(self.smoothed)), key=self.smoothed.__getitem__)]


def range_lrs(lr_min: float, lr_max: float, steps: int) -> list[float]:
    """lr_min (lr_max / lr_min)^(i / (steps - 1)) for i = 0 .. steps - 1."""
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max; got lr_min={lr_min}, lr_max={lr_max}.")
    if steps < 2:
        raise ValueError(f"steps={steps} is invalid: the range test needs at least 2 steps.")
    return [lr_min * (lr_max / lr_min) ** (i / (steps - 1)) for i in range(steps)]


def smooth_losses(losses: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average: a_i / (1 - beta^(i+1))."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta={beta} is invalid: expected a number in [0, 1).")
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float], rule: str = "steepest") -> float:
    """``min_over_10``: a tenth of the learning rate at the lowest smoothed loss (fast.ai's rule
    of thumb for staying well below where the loss turns up; Smith 2017 instead read off the rates
    where the accuracy starts to rise and where it stops). ``steepest``: where the smoothed loss
    falls fastest per unit of log lr (central differences), searched before the minimum (fast.ai's
    ``lr_find`` suggestion)."""
    if len(lrs) != len(smoothed) or len(lrs) < 3:
        raise ValueError("suggest_lr needs matching lists of at least 3 learning rates and losses.")
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    if rule == "min_over_10":
        return lrs[best] / 10
    if rule == "steepest":
        end = max(2, best)
        slopes = [(smoothed[i + 1] - smoothed[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1])
                  for i in range(1, end)]
        return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]
    raise ValueError(f"rule={rule!r} is invalid: expected one of {SUGGESTION_RULES}.")


def lr_range_test(model_config: ModelConfig, train_config: TrainConfig,
                  corpus: Corpus | str = "tinyshakespeare", *, lr_min: float = 1e-5,
                  lr_max: float = 1.0, steps: int = 100, beta: float = 0.9,
                  stop_factor: float = 4.0, rule: str = "steepest",
                  cache: bool = True) -> RangeTest:
    """Run the range test with ``train_config``'s optimizer, batch size, clipping and seed (its lr,
    schedule and steps are replaced by the geometric ramp). Kept in the experiment cache."""
    corpus = char_corpus(corpus) if isinstance(corpus, str) else corpus
    lrs = range_lrs(lr_min, lr_max, steps)
    if stop_factor <= 1:
        raise ValueError(f"stop_factor={stop_factor} is invalid: expected a number > 1 (e.g. 4).")
    if rule not in SUGGESTION_RULES:
        raise ValueError(f"rule={rule!r} is invalid: expected one of {SUGGESTION_RULES}.")
    variant = f"lr_range:{lr_min}:{lr_max}:{steps}:{beta}:{stop_factor}"
    key = run_key(model_config, train_config, corpus, variant)
    data, cached = cached_record(
        key, lambda: _ramp(model_config, train_config, corpus, lrs, beta, stop_factor), cache)
    return RangeTest(data["lrs"], data["losses"], data["smoothed"],
                     suggest_lr(data["lrs"], data["smoothed"], rule), rule, cached=cached)


def _ramp(model_config: ModelConfig, train_config: TrainConfig, corpus: Corpus, lrs: list[float],
          beta: float, stop_factor: float) -> dict:
    """Train along the ramp ``lrs`` until the smoothed loss passes ``stop_factor`` times its
    minimum; returns the lrs run, the raw and the smoothed losses."""
    lr_min = lrs[0]
    device = pick_device(train_config.device)
    torch.manual_seed(train_config.seed)
    model = Transformer(model_config).to(device).train()
    optimizer = build_optimizer(model, train_config.replace(lr=lr_min), device)
    sampler = BatchSampler(corpus.train, model_config.block_size, train_config.batch_size, device,
                           torch.Generator(device=device).manual_seed(train_config.seed))
    ctx = ObjectiveContext(corpus.tokenizer,
                           torch.Generator(device=device).manual_seed(
                               train_config.seed + SEED_OFFSETS["objective"]))
    objective = OBJECTIVES[train_config.objective].loss
    clip = train_config.grad_clip or math.inf
    losses: list[float] = []
    smoothed: list[float] = []
    for lr in lrs:
        set_lr(optimizer, lr)
        x, y = sampler.sample()  # (B, T), (B, T)
        loss = objective(model, x, y, ctx)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(value)
        smoothed = smooth_losses(losses, beta)
        if smoothed[-1] > stop_factor * min(smoothed):
            break
    lrs = lrs[: len(losses)]
    if len(losses) < 3:
        raise ValueError(f"the loss diverged within {len(losses)} steps: lower lr_min={lr_min}.")
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed}

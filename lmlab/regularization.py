"""Regularization, written out: label smoothing, calibration, weight decay, dropout, early stopping.

Everything here is small and checked against PyTorch's own implementation where one exists:

* label smoothing: cross-entropy against q = (1 - eps) one_hot(y) + eps / V
  (``F.cross_entropy(..., label_smoothing=eps)``);
* calibration: expected calibration error over equal-width confidence bins (Guo et al. 2017);
* weight decay: an L2 penalty in the loss against decoupled weight decay, one step of SGD and of
  Adam each way (``torch.optim.SGD``, ``Adam`` and ``AdamW``; Loshchilov & Hutter 2019);
* dropout: inverted dropout, y = x * m / (1 - p) with m ~ Bernoulli(1 - p) (``F.dropout``), its
  moments, and where a :class:`lmlab.Transformer` applies it;
* early stopping: where a patience rule stops on a validation curve.

Running the chapter's experiments lives with the other runs
(:func:`lmlab.experiments.regularized_run`, ``run_experiment(..., keep_best=True)``), scoring a
model with the evaluation (:func:`lmlab.evaluation.validation_loss`, and the probabilities
calibration reads, :func:`lmlab.evaluation.predict_probabilities`), restoring the best checkpoint
with the checkpoints (:func:`lmlab.checkpoint.restore_best`): this module holds the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .history import rows_with
from .model import MLP, Block, Transformer
from .objectives import IGNORE_INDEX
from .optim import param_groups
from .optimizers import adam_update

# ------------------------------------------------------------------------------ label smoothing
SPREADS = ("all", "others")


def smoothed_targets(targets: torch.Tensor, n_classes: int, smoothing: float,
                     spread: str = "all") -> torch.Tensor:
    """Target distributions q, one row per target: (N,) ids -> (N, V) probabilities.

    ``spread="all"`` (Szegedy et al. 2016; PyTorch): q_k = (1 - eps) [k = y] + eps / V, so the
    true class keeps 1 - eps + eps / V. ``spread="others"`` (a common variant): q_y = 1 - eps and
    q_k = eps / (V - 1) for every k != y.
    """
    _check_smoothing(smoothing)
    if spread not in SPREADS:
        raise ValueError(f"spread={spread!r} is invalid: expected 'all' (PyTorch's rule) or "
                         "'others'.")
    if targets.dim() != 1:
        raise ValueError(f"targets must be 1-D class ids (N,); got shape {tuple(targets.shape)}.")
    one_hot = F.one_hot(targets, n_classes).float()  # (N, V)
    if spread == "all":
        return (1.0 - smoothing) * one_hot + smoothing / n_classes  # (N, V)
    return (1.0 - smoothing) * one_hot + smoothing / (n_classes - 1) * (1.0 - one_hot)  # (N, V)


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float,
                                 spread: str = "all",
                                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean over kept positions of  -sum_k q_k log p_k,  p = softmax(logits), q from
    :func:`smoothed_targets`. With ``spread="all"`` this is

        (1 - eps) * (-log p_y) + eps * mean_k(-log p_k),

    equal to ``F.cross_entropy(logits, targets, label_smoothing=eps)``.
    logits: (N, V) or (B, T, V); targets: (N,) or (B, T); ``ignore_index`` entries are skipped.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not "
                         "match: expected logits (..., V) and targets (...).")
    logits = logits.reshape(-1, logits.size(-1)).float()  # (N, V)
    targets = targets.reshape(-1)  # (N,)
    keep = targets != ignore_index  # (N,)
    log_p = torch.log_softmax(logits[keep], dim=-1)  # (N_kept, V)
    q = smoothed_targets(targets[keep], logits.size(-1), smoothing, spread)  # (N_kept, V)
    return -(q * log_p).sum(dim=-1).mean()


def smoothed_loss_floor(n_classes: int, smoothing: float) -> float:
    """The smallest smoothed loss a model can reach: the entropy H(q) of the target q, attained
    at p = q.  H(q) = -a log a - (V - 1) b log b  with a = 1 - eps + eps / V, b = eps / V."""
    _check_smoothing(smoothing)
    a = 1.0 - smoothing + smoothing / n_classes
    b = smoothing / n_classes
    return -a * math.log(a) - ((n_classes - 1) * b * math.log(b) if b > 0 else 0.0)


def _check_smoothing(smoothing: float) -> None:
    if not (isinstance(smoothing, (int, float)) and 0.0 <= smoothing < 1.0):
        raise ValueError(f"smoothing={smoothing!r} is invalid: expected a number in [0, 1), "
                         "e.g. 0.1.")


# ---------------------------------------------------------------------------------- calibration
@dataclass
class CalibrationBins:
    """Per-bin statistics of a reliability diagram (M equal-width bins of confidence)."""

    lower: torch.Tensor  # (M,) bin edges: a prediction with confidence c falls in (lower, upper]
    upper: torch.Tensor  # (M,)
    count: torch.Tensor  # (M,) predictions in the bin
    confidence: torch.Tensor  # (M,) mean confidence max_k p_k in the bin (0 where empty)
    accuracy: torch.Tensor  # (M,) fraction of correct argmax predictions in the bin (0 where empty)

    @property
    def ece(self) -> float:
        n = self.count.sum()
        return float((self.count / n * (self.accuracy - self.confidence).abs()).sum())


def calibration_bins(probs: torch.Tensor, targets: torch.Tensor,
                     n_bins: int = 15) -> CalibrationBins:
    """Bin predictions by confidence c = max_k p_k into (i/M, (i+1)/M], i = 0 .. M-1 (c = 0 goes
    to the first bin); per bin, the mean confidence and the accuracy of the argmax prediction.
    probs: (N, V) rows summing to 1; targets: (N,)."""
    if probs.dim() != 2 or targets.shape != probs.shape[:1]:
        raise ValueError(f"expected probs (N, V) and targets (N,); got {tuple(probs.shape)} and "
                         f"{tuple(targets.shape)}.")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} is invalid: expected a positive integer such as 15.")
    probs = probs.detach().double()
    confidence, predicted = probs.max(dim=-1)  # (N,), (N,)
    correct = (predicted == targets).double()  # (N,)
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)  # (N,) bin of each
    count = torch.bincount(index, minlength=n_bins).double()  # (M,)
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)  # (M,)
    correct_sum = torch.bincount(index, weights=correct, minlength=n_bins)  # (M,)
    safe = count.clamp(min=1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return CalibrationBins(edges[:-1], edges[1:], count, conf_sum / safe, correct_sum / safe)


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor,
                               n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over M equal-width confidence bins (Guo et al. 2017).
    0 for a calibrated model; large when confidence and accuracy disagree."""
    return calibration_bins(probs, targets, n_bins).ece


# ------------------------------------------------------------------------------- weight decay
def l2_penalty(params, coefficient: float) -> torch.Tensor:
    """(lambda / 2) * sum_i ||theta_i||^2: added to the loss, its gradient is lambda * theta."""
    return 0.5 * coefficient * sum((p * p).sum() for p in params)


def sgd_l2_step(theta: torch.Tensor, grad: torch.Tensor, lr: float, l2: float) -> torch.Tensor:
    """One SGD step on loss + (lambda/2)||theta||^2:  theta - lr * (g + lambda * theta)."""
    return theta - lr * (grad + l2 * theta)


def sgd_decoupled_step(theta: torch.Tensor, grad: torch.Tensor, lr: float,
                       weight_decay: float) -> torch.Tensor:
    """One SGD step with decoupled weight decay:  (1 - lr * lambda) * theta - lr * g.
    Algebraically the same update as :func:`sgd_l2_step` with l2 = weight_decay."""
    return (1.0 - lr * weight_decay) * theta - lr * grad


def _adam_step(theta: torch.Tensor, grad: torch.Tensor, state: dict, lr: float,
               weight_decay: float, betas: tuple[float, float], eps: float,
               decoupled: bool) -> torch.Tensor:
    theta = theta.clone()
    adam_update(theta, grad, state, {"lr": lr, "betas": betas, "eps": eps,
                                     "weight_decay": weight_decay, "decoupled": decoupled})
    return theta


def adam_l2_step(theta: torch.Tensor, grad: torch.Tensor, state: dict, lr: float,
                 l2: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> torch.Tensor:
    """One Adam step on loss + (lambda/2)||theta||^2 (``torch.optim.Adam(weight_decay=lambda)``):

        g' = g + lambda * theta;  m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
        theta - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

    The decay term lambda * theta is divided by sqrt(v_hat) like the gradient: weights with large
    gradients are decayed less. ``state`` (a dict, ``{}`` before the first step: t, m, v) is
    updated in place by :func:`lmlab.optimizers.adam_update`, the update of the chapter 4
    optimizer; returns the new theta."""
    return _adam_step(theta, grad, state, lr, l2, betas, eps, decoupled=False)


def adamw_step(theta: torch.Tensor, grad: torch.Tensor, state: dict, lr: float,
               weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8) -> torch.Tensor:
    """One AdamW step (Loshchilov & Hutter 2019, as ``torch.optim.AdamW``): decay decoupled from
    the adaptive gradient step,

        theta <- (1 - lr * lambda) * theta - lr * m_hat / (sqrt(v_hat) + eps)

    with m, v the moments of g alone. Every weight shrinks by the same factor 1 - lr * lambda.
    ``state`` (a dict, ``{}`` before the first step) is updated in place by
    :func:`lmlab.optimizers.adam_update`; returns the new theta."""
    return _adam_step(theta, grad, state, lr, weight_decay, betas, eps, decoupled=True)


def decay_table(model: nn.Module, weight_decay: float = 0.1) -> list[dict]:
    """Which parameters :func:`lmlab.optim.param_groups` decays: one row per parameter tensor
    (tied tensors once) with its name, shape, number of elements and group."""
    group_of = {id(p): g["name"] for g in param_groups(model, weight_decay) for p in g["params"]}
    return [{"name": name, "shape": tuple(p.shape), "numel": p.numel(), "group": group_of[id(p)]}
            for name, p in model.named_parameters() if id(p) in group_of]


DECAY_RULES = ("linear_weights", "matrices")
"""Which tensors weight decay acts on. ``linear_weights`` (lmlab's default,
:func:`lmlab.optim.param_groups`): the weights of ``nn.Linear`` layers not tied to an embedding,
minGPT's rule. ``matrices``: every tensor with two or more dimensions, embeddings and the tied
output layer included, nanoGPT's rule (its ``configure_optimizers``: ``p.dim() >= 2``)."""


def matrix_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """nanoGPT's rule: ``decay`` = every parameter with dim >= 2 (tied tensors once), ``no_decay``
    = the rest (biases, LayerNorm gains)."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():  # parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


class MatrixDecayTransformer(Transformer):
    """A :class:`lmlab.Transformer` whose optimizer decays every matrix
    (:func:`matrix_decay_groups`, read by :func:`lmlab.optim.build_optimizer` through
    ``optimizer_groups``)."""

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        return matrix_decay_groups(self, weight_decay)


def decayed_weight_norm(model: nn.Module) -> float:
    """sqrt(sum ||W||^2) over the tensors weight decay acts on (the ``decay`` group)."""
    decay = next(g for g in param_groups(model, 0.0) if g["name"] == "decay")["params"]
    return float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in decay)))


# ------------------------------------------------------------------------------------ dropout
def inverted_dropout(x: torch.Tensor, p: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """y = x * m * (1 / (1 - p)),  m ~ Bernoulli(1 - p) elementwise (drawn like ``F.dropout``, so
    with the same generator state the two agree bit for bit). E[y] = x: keeping a unit with
    probability 1 - p and scaling it by 1 / (1 - p) preserves the expectation, so nothing needs
    rescaling at evaluation time."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p={p!r} is invalid: expected a drop probability in [0, 1).")
    mask = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)  # 1 = kept
    return x * mask * (1.0 / (1.0 - p))


def dropout_moments(p: float) -> tuple[float, float]:
    """Mean and variance of the multiplier m / (1 - p), m ~ Bernoulli(1 - p): (1, p / (1 - p)).
    So y = x m / (1 - p) has E[y] = x and Var[y] = x^2 p / (1 - p)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p={p!r} is invalid: expected a drop probability in [0, 1).")
    return 1.0, p / (1.0 - p)


def dropout_sites(model: nn.Module) -> list[dict]:
    """Where a :class:`lmlab.Transformer` drops units: one row per site with the module name,
    what is dropped and the rate p."""
    parents = dict(model.named_modules())
    rows = []
    for name, module in model.named_modules():
        parent = parents.get(name.rpartition(".")[0]) if "." in name else model
        if isinstance(module, MultiHeadAttention):
            rows.append({"module": name, "drops": "attention weights (softmax output)",
                         "p": module.dropout})
        elif isinstance(module, nn.Dropout):
            if isinstance(parent, MLP):
                what = "MLP residual branch (before the add)"
            elif isinstance(parent, Block):
                what = "attention residual branch (before the add)"
            elif parent is model:
                what = "embeddings (token + position)"
            else:
                what = "other"
            rows.append({"module": name, "drops": what, "p": module.p})
    return rows


# ---------------------------------------------------------------------------- early stopping
def early_stop_point(steps: list[int], val_losses: list[float], patience: int) -> tuple[int, int]:
    """Where a patience rule stops on a validation curve: returns (best_step, stop_step).

    Walking the evaluations in order, a loss below the best so far resets the count; any other
    one adds 1; training stops at the evaluation where the count reaches ``patience``
    (``patience=0``: never, stop_step is the last step). Same rule as :func:`lmlab.train`.
    """
    if len(steps) != len(val_losses) or not steps:
        raise ValueError("steps and val_losses must be non-empty lists of the same length.")
    if not isinstance(patience, int) or patience < 0:
        raise ValueError(f"patience={patience!r} is invalid: expected an integer >= 0.")
    best, best_step, bad = math.inf, steps[0], 0
    for step, loss in zip(steps, val_losses, strict=True):
        if loss < best:
            best, best_step, bad = loss, step, 0
        else:
            bad += 1
        if patience and bad >= patience:
            return best_step, step
    return best_step, steps[-1]


def generalization_gap(run) -> tuple[list[int], list[float]]:
    """(steps, val_loss - eval_train_loss) at every evaluation of a Run or Result: the loss on
    held-out text minus the loss on fixed training batches, both in eval mode."""
    rows = rows_with(run.history, "val_loss", "eval_train_loss")
    return [r["step"] for r in rows], [r["val_loss"] - r["eval_train_loss"] for r in rows]

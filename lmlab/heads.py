"""Task heads on a Transformer's hidden states: a pair head on [CLS], a linear probe on frozen
features, and a short fine-tune of the whole model with a classification head.

    pooled  = h[:, 0]                                   ("cls": the first position)
            = sum_t m_t h_t / sum_t m_t                 ("mean": over real tokens, m = key padding)
            = h[:, p]                                   (an int p: the state at position p)
    logits  = W pooled + b                              (one linear layer, W: (K, C))

A linear probe trains only (W, b) on frozen features: it measures what the pretrained features
already make linearly readable. A fine-tune trains (W, b) and every weight of the model.
:func:`mean_interval` gives the Student-t confidence interval used to compare probes across seeds.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .model import Builder, Transformer
from .modes import eval_mode

POOLINGS = ("cls", "mean")


class TransformerWithPairHead(Transformer):
    """A :class:`Transformer` with ``pair_head``: Linear(d_model, 2) on the [CLS] hidden state,
    used by the ``mlm_sop`` and ``mlm_nsp`` objectives (logit 1 = the segments are in order)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.pair_head = nn.Linear(config.d_model, 2)
        nn.init.normal_(self.pair_head.weight, mean=0.0, std=config.init_std)
        nn.init.zeros_(self.pair_head.bias)


transformer_with_pair_head = Builder("pair_head", TransformerWithPairHead)
"""``config -> TransformerWithPairHead(config)``, named ``pair_head`` in the experiment cache."""


def bidirectional_mask(key_padding: torch.Tensor) -> torch.Tensor:
    """(B, T) bool (True = real token) -> (B, 1, T, T): every position sees every real token.
    A prefix LM reads an input as one long prefix with this mask."""
    t = key_padding.size(1)
    return key_padding[:, None, None, :].expand(-1, 1, t, -1)  # (B, 1, T, T)


def pool(h: torch.Tensor, key_padding: torch.Tensor, how: str | int = "mean") -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): ``cls`` takes h[:, 0]; ``mean`` averages real tokens;
    an int p takes h[:, p], the state at one position (0 <= p < T)."""
    if isinstance(how, int) and not isinstance(how, bool):
        if not 0 <= how < h.size(1):
            raise ValueError(f"pooling={how} is invalid: a position must lie in [0, {h.size(1)}).")
        return h[:, how]
    if how not in POOLINGS:
        raise ValueError(f"pooling={how!r} is invalid: expected one of {POOLINGS} or a position.")
    if how == "cls":
        return h[:, 0]
    m = key_padding.to(h.dtype)[..., None]  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, C)


def encode(model: Transformer, ids: torch.Tensor, key_padding: torch.Tensor, *,
           bidirectional: bool = False, pooling: str | int = "mean") -> torch.Tensor:
    """Pooled features (B, C) of ``model`` for ids (B, T). ``bidirectional=True`` overrides a causal
    model's mask with :func:`bidirectional_mask` (how a prefix LM reads its input)."""
    mask = bidirectional_mask(key_padding) if bidirectional else None
    h = model.hidden(ids, mask=mask, key_padding=key_padding)  # (B, T, C)
    return pool(h, key_padding, pooling)


@torch.no_grad()
def frozen_features(model: Transformer, ids: torch.Tensor, key_padding: torch.Tensor, *,
                    bidirectional: bool = False, pooling: str | int = "mean",
                    batch_size: int = 256) -> torch.Tensor:
    """Features (N, C) of a frozen model in eval mode, computed in batches on the model's device."""
    device = next(model.parameters()).device
    with eval_mode(model):
        out = [encode(model, ids[i : i + batch_size].to(device),
                      key_padding[i : i + batch_size].to(device),
                      bidirectional=bidirectional, pooling=pooling).float().cpu()
               for i in range(0, len(ids), batch_size)]
    return torch.cat(out)  # (N, C)


def _check_labels(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} examples but {len(labels)} labels: they must match.")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}); got [{int(labels.min())}, "
                         f"{int(labels.max())}].")


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int, *,
                 weight_decay: float = 1e-3, steps: int = 200, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression on fixed features: minimise
    CE(W z + b, y) + weight_decay * ||W||^2 with full-batch L-BFGS, z the features standardized with
    the training mean and std (folded back into W, b, so the returned layer takes raw features)."""
    _check_labels(train_x, train_y, n_classes)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)  # (C,), (C,)
    z = (train_x - mean) / std  # (N, C)
    torch.manual_seed(seed)
    layer = nn.Linear(z.size(1), n_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=steps,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(z), train_y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # W (z) + b = (W / std) x + (b - W mean / std)
        w = layer.weight / std  # (K, C)
        layer.bias -= w @ mean
        layer.weight.copy_(w)
    return layer


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((logits.argmax(-1) == labels).float().mean())


@torch.no_grad()
def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row, -log softmax(logits)[label] in nats: logits (N, K) -> (N,)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with df degrees of freedom: the x > 0 with
    1/2 + integral_0^x f(u) du = p, f(u) = Gamma((df+1)/2) / (sqrt(df pi) Gamma(df/2))
    (1 + u^2/df)^(-(df+1)/2); the integral by Simpson's rule on [0, x] (2,000 intervals), the
    root by bisection. The tests check it against tabulated quantiles to 4 decimals."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1; got p={p}, df={df}.")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf_above_half(x: float, n: int = 2000) -> float:  # integral_0^x f, Simpson, n even
        h = x / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while 0.5 + cdf_above_half(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 + cdf_above_half(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t confidence interval for the mean of n >= 2 values:
    mean +- t_{(1+level)/2, n-1} s / sqrt(n), s the sample standard deviation."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n < 2:
        raise ValueError(f"an interval needs at least 2 values, got {n}.")
    mean = sum(xs) / n
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, student_t_quantile((1 + level) / 2, n - 1) * s / math.sqrt(n)


class SequenceClassifier(nn.Module):
    """A Transformer body plus Linear(d_model, n_classes) on pooled hidden states."""

    def __init__(self, body: Transformer, n_classes: int, *, pooling: str = "mean",
                 bidirectional: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is invalid: expected one of {POOLINGS}.")
        self.body = body
        self.head = nn.Linear(body.config.d_model, n_classes)
        self.pooling = pooling
        self.bidirectional = bidirectional

    def forward(self, ids: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        feats = encode(self.body, ids, key_padding, bidirectional=self.bidirectional,
                       pooling=self.pooling)  # (B, C)
        return self.head(feats)  # (B, K)


def fine_tune(body: Transformer, ids: torch.Tensor, key_padding: torch.Tensor, labels: torch.Tensor,
              n_classes: int, *, steps: int = 100, batch_size: int = 32, lr: float = 1e-3,
              weight_decay: float = 0.01, pooling: str = "mean", bidirectional: bool = False,
              seed: int = 0, device: str | torch.device = "cpu") -> SequenceClassifier:
    """Train a copy of ``body`` plus a classification head with AdamW on cross-entropy for
    ``steps`` minibatches (seeded); the original ``body`` is left untouched. Returns the classifier
    in eval mode."""
    _check_labels(ids, labels, n_classes)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must both be >= 1.")
    torch.manual_seed(seed)
    model = SequenceClassifier(copy.deepcopy(body), n_classes, pooling=pooling,
                               bidirectional=bidirectional).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(ids), (batch_size,), generator=g)  # (b,)
        classifier_step(model, opt, ids[idx], key_padding[idx], labels[idx])
    return model.eval()


def classifier_step(model: SequenceClassifier, opt: torch.optim.Optimizer, ids: torch.Tensor,
                    key_padding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimizer step on the mean cross-entropy of a minibatch (ids, key_padding: (b, T);
    labels: (b,)), moved to the model's device; returns the loss (detached, on the device)."""
    device = next(model.parameters()).device
    logits = model(ids.to(device), key_padding.to(device))  # (b, K)
    loss = F.cross_entropy(logits.float(), labels.to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def classifier_accuracy(model: SequenceClassifier, ids: torch.Tensor, key_padding: torch.Tensor,
                        labels: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy of a :class:`SequenceClassifier` on (ids, key_padding, labels), in batches."""
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(ids), batch_size):
        batch = slice(i, i + batch_size)
        logits = model(ids[batch].to(device), key_padding[batch].to(device))  # (b, K)
        correct += int((logits.argmax(-1).cpu() == labels[batch]).sum())
    return correct / len(ids)


@torch.no_grad()
def pair_head_accuracy(model: TransformerWithPairHead, ids: torch.Tensor, key_padding: torch.Tensor,
                       labels: torch.Tensor) -> float:
    """Accuracy of ``model.pair_head`` on encoded NSP or SOP pairs: ids (N, T) and key_padding
    (N, T) as :func:`lmlab.pairs.pair_layout` lays them out, labels (N,) (unmasked inputs, eval
    mode on the model's device; restores the mode)."""
    device = next(model.parameters()).device
    with eval_mode(model):
        h = model.hidden(ids.to(device), key_padding=key_padding.to(device))  # (N, T, C)
    return accuracy(model.pair_head(h[:, 0]).cpu(), labels)

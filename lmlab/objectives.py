"""Pretraining objectives: what the model is asked to predict, and the loss that scores it.

``OBJECTIVES`` is the one registry: it maps a name to an :class:`Objective` record holding every
fact about it: its loss ``(model, x, y, ctx) -> scalar``, which the training loop calls on a batch
of windows ``x`` (B, T) with next-token targets ``y`` (B, T); the attention it needs from the model;
whether it trains a pair head; whether it reads the masking rate; and what it predicts, in words.
The training loop, the configs' validation, the chapter and its explorer all read it. ``ctx`` is an
:class:`ObjectiveContext` carrying the tokenizer, a generator for any randomness (so masking is
reproducible and resumable) and options such as label smoothing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .device import generator_device
from .pairs import LinePairBank, line_pair_bank, segment_length

IGNORE_INDEX = -100


@dataclass
class ObjectiveContext:
    tokenizer: object
    generator: torch.Generator | None = None
    label_smoothing: float = 0.0
    mask_rate: float = 0.15
    pair_weight: float = 1.0  # lambda in L = L_MLM + lambda * L_pair
    pair_text: torch.Tensor | None = None  # (N,) token ids the NSP / SOP line pairs come from
    _pair_banks: dict = field(default_factory=dict, init=False, repr=False)

    def pair_bank(self, t: int) -> LinePairBank:
        """The :class:`lmlab.pairs.LinePairBank` of ``pair_text`` for windows of t tokens (built
        once per segment length, then reused)."""
        if self.pair_text is None:
            raise ValueError("the NSP / SOP objectives draw line pairs from a text: pass "
                             "ObjectiveContext(..., pair_text=corpus.train) (lmlab.train does).")
        s = segment_length(t)
        if s not in self._pair_banks:  # on the generator's device, where the pairs are drawn
            device = generator_device(self.generator)
            self._pair_banks[s] = line_pair_bank(self.pair_text.to(device), self.tokenizer, s)
        return self._pair_banks[s]


def clm_loss(logits: torch.Tensor, targets: torch.Tensor,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Causal LM loss: mean over positions of -log p(x_{t+1} | x_{<=t}).

    logits: (B, T, V); targets: (B, T) with ``targets[:, t]`` the token after position t;
    entries equal to -100 are ignored. Equal to ``F.cross_entropy`` on the flattened tensors.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"clm_loss expects logits (B, T, V) and targets (B, T); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}."
        )
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def mask_tokens(ids: torch.Tensor, tokenizer, rate: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking rule (Devlin et al., 2019). Returns ``(inputs, labels)``, both like ``ids``.

    Each non-special, non-padding position is selected with probability ``rate``. Of the selected:
    80% become [MASK], 10% a random (non-special) token, 10% stay unchanged. ``labels`` holds the
    original token at selected positions and -100 everywhere else, so only selected positions
    contribute to the loss.
    """
    if not 0 < rate < 1:
        raise ValueError(f"rate={rate!r} is invalid: expected a masking rate in (0, 1), e.g. 0.15.")
    device = ids.device
    candidates = ~tokenizer.is_special(ids)  # specials and [PAD] are never selected
    u = torch.rand(ids.shape, device=device, generator=generator)
    selected = (u < rate) & candidates
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    action = torch.rand(ids.shape, device=device, generator=generator)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(0, tokenizer.n_chars, ids.shape, device=device, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(ids, tokenizer.mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the selected positions only (labels != -100)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                           ignore_index=IGNORE_INDEX)


def clm_objective(model, x, y, ctx: ObjectiveContext) -> torch.Tensor:
    return clm_loss(model(x), y, ctx.label_smoothing)


def mlm_objective(model, x, y, ctx: ObjectiveContext) -> torch.Tensor:
    inputs, labels = mask_tokens(x, ctx.tokenizer, ctx.mask_rate, ctx.generator)
    if not (labels != IGNORE_INDEX).any():  # vanishingly rare; keeps the loss finite
        labels[0, 0] = x[0, 0]
    return masked_lm_loss(model(inputs), labels)


# ------------------------------------------------------------------ units


def bits_per_char(nats: float | torch.Tensor) -> float | torch.Tensor:
    """Convert a mean cross-entropy in nats per predicted character to bits: nats / ln 2."""
    return nats / math.log(2)


# ------------------------------------------------------------------ prefix LM


def prefix_lm_mask(prefix_len: torch.Tensor, t: int) -> torch.Tensor:
    """Prefix-LM attention mask (Raffel et al. 2020; Dong et al. 2019), True = may attend.

    allowed[b, 0, i, j] = (j <= i) or (j < prefix_len[b]): bidirectional inside the prefix,
    causal after it. prefix_len: (B,) ints in [0, t]; returns (B, 1, t, t) bool.
    """
    if prefix_len.dim() != 1:
        raise ValueError(f"prefix_len must be 1-D (B,), got shape {tuple(prefix_len.shape)}.")
    if bool(((prefix_len < 0) | (prefix_len > t)).any()):
        raise ValueError(f"prefix lengths must lie in [0, {t}]; got {prefix_len.tolist()}.")
    i = torch.arange(t, device=prefix_len.device)[:, None]  # (T, 1) query positions
    j = torch.arange(t, device=prefix_len.device)[None, :]  # (1, T) key positions
    allowed = (j <= i) | (j < prefix_len[:, None, None])  # (B, T, T)
    return allowed[:, None]  # (B, 1, T, T)


def prefix_lm_labels(targets: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
    """Next-token targets (B, T) kept only where position t >= prefix_len - 1, -100 elsewhere.

    Position t predicts x_{t+1}; inside the prefix x_{t+1} is visible (bidirectional), so only the
    tokens after the prefix, x_P .. x_T, are predicted: positions P-1 .. T-1.
    """
    pos = torch.arange(targets.size(1), device=targets.device)[None, :]  # (1, T)
    keep = pos >= (prefix_len[:, None] - 1)  # (B, T)
    return torch.where(keep, targets, torch.full_like(targets, IGNORE_INDEX))


def sample_prefix_lengths(batch: int, t: int, generator: torch.Generator | None = None,
                          device=None) -> torch.Tensor:
    """Prefix lengths drawn uniformly from {1, ..., t - 1}: (B,) int64."""
    if t < 2:
        raise ValueError(f"a prefix LM needs windows of at least 2 tokens, got t={t}.")
    return torch.randint(1, t, (batch,), generator=generator, device=device)


def prefix_lm_objective(model, x, y, ctx: ObjectiveContext) -> torch.Tensor:
    """Prefix LM: a random prefix per window is read bidirectionally, the rest is predicted
    causally; mean cross-entropy over the predicted (post-prefix) tokens only."""
    prefix_len = sample_prefix_lengths(x.size(0), x.size(1), ctx.generator, x.device)  # (B,)
    logits = model(x, mask=prefix_lm_mask(prefix_len, x.size(1)))  # (B, T, V)
    return masked_lm_loss(logits, prefix_lm_labels(y, prefix_len))


# ------------------------------------------------------------------ span corruption (T5)


def random_partitions(total: int, parts: int, batch: int = 1,
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``batch`` independent splits of ``total`` into ``parts`` positive integers summing to
    ``total``, each uniform over all such compositions (T5's random segmentation): parts - 1
    distinct cut points drawn uniformly from 1..total-1 (the first parts - 1 of a random
    permutation, the permutation being the order of total - 1 uniform keys).

    Returns (batch, parts) int64 on ``device`` (the generator's device when one is given).
    """
    if not 1 <= parts <= total:
        raise ValueError(f"cannot split {total} into {parts} positive parts: "
                         "need 1 <= parts <= total.")
    if generator is not None:
        device = generator_device(generator)
    keys = torch.rand(batch, total - 1, generator=generator, device=device)  # (batch, total - 1)
    cuts = keys.argsort(dim=1)[:, : parts - 1].add_(1).sort(dim=1).values  # (batch, parts - 1)
    edges = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device), cuts,
                       torch.full((batch, 1), total, dtype=torch.long, device=device)], dim=1)
    return edges.diff(dim=1)  # (batch, parts), each row sums to total


def random_partition(total: int, parts: int, generator: torch.Generator | None = None) -> list[int]:
    """One split of ``total`` into ``parts`` positive integers: :func:`random_partitions`'s."""
    return random_partitions(total, parts, 1, generator)[0].tolist()


def span_counts(length: int, rate: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, spans) for a sequence of ``length``: n_noise = round(length * rate) (at least
    1), n_spans = round(n_noise / mean_span) clipped to [1, min(n_noise, length - n_noise)]."""
    n_noise = min(length - 1, max(1, round(length * rate)))
    n_spans = max(1, min(round(n_noise / mean_span), n_noise, length - n_noise))
    return n_noise, n_spans


def span_layout(x: torch.Tensor, tokenizer, rate: float = 0.15, mean_span: float = 3.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """T5's span corruption (Raffel et al. 2020) of every row of ``x`` (B, L) at once: returns
    ``seq`` = source + target (B, S) and the source length (the same for every row).

    Each row's L tokens are cut into n_spans kept runs and n_spans noise spans, alternating
    keep_1 noise_1 ... keep_n noise_n, with lengths from :func:`random_partitions` (n_noise
    tokens in all, :func:`span_counts`). With a character vocabulary the one [MASK] token serves
    as every sentinel (the k-th [MASK] of the target names the k-th of the source):

        source = keep_1 [MASK] keep_2 [MASK] ... keep_n [MASK] [SEP]   L - n_noise + n_spans + 1
        target = [MASK] noise_1 [MASK] noise_2 ... [MASK] noise_n [SEP]      n_noise + n_spans + 1

    Every token goes to its place in one scatter: a kept token p of run k to
    p - (noise before p) + k, a noise token p of span k to len(source) + (noise before p) + k + 1.
    """
    b, length = x.shape
    n_noise, n_spans = span_counts(length, rate, mean_span)
    device = generator.device if generator is not None else x.device
    noise = random_partitions(n_noise, n_spans, b, generator, device).to(x.device)  # (B, n)
    keep = random_partitions(length - n_noise, n_spans, b, generator, device).to(x.device)
    source_len, target_len = length - n_noise + n_spans + 1, n_noise + n_spans + 1
    ends = torch.stack([keep, noise], dim=2).flatten(1).cumsum(1)  # (B, 2n) ends of the runs
    pos = torch.arange(length, device=x.device).repeat(b, 1)  # (B, L)
    segment = torch.searchsorted(ends, pos, right=True)  # (B, L): 2k keep run k, 2k+1 span k
    is_noise, k = segment % 2 == 1, segment // 2
    noise_before = is_noise.long().cumsum(1) - is_noise.long()  # (B, L)
    dest = torch.where(is_noise, source_len + noise_before + k + 1, pos - noise_before + k)
    spans = torch.arange(n_spans, device=x.device)  # (n,)
    source_masks = keep.cumsum(1) + spans  # (B, n): after keep runs 1..k+1 and k masks
    target_masks = source_len + noise.cumsum(1) - noise + spans  # (B, n)
    seq = torch.full((b, source_len + target_len), tokenizer.sep_id, dtype=x.dtype,
                     device=x.device)  # (B, S); the two [SEP]s stay
    seq.scatter_(1, dest, x)
    seq.scatter_(1, torch.cat([source_masks, target_masks], 1), tokenizer.mask_id)
    return seq, source_len


def span_corruption(ids: torch.Tensor, tokenizer, rate: float = 0.15, mean_span: float = 3.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's span corruption on one 1-D sequence; returns (source, target) as laid out by
    :func:`span_layout`: round(L * rate) tokens in about n_noise / mean_span contiguous spans are
    removed; each span is replaced in the source by one sentinel, and the target lists the
    sentinels each followed by the span it hides, then [SEP]."""
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError("span_corruption takes one 1-D sequence of >= 2 ids, "
                         f"got shape {tuple(ids.shape)}.")
    _check_span_options(rate, mean_span)
    seq, source_len = span_layout(ids[None], tokenizer, rate, mean_span, generator)
    return seq[0, :source_len], seq[0, source_len:]


def _check_span_options(rate: float, mean_span: float) -> None:
    if not 0 < rate < 1:
        raise ValueError(f"rate={rate!r} is invalid: expected a corruption rate in (0, 1).")
    if mean_span < 1:
        raise ValueError(f"mean_span={mean_span!r} is invalid: expected a span length >= 1.")


def span_source_length(t: int, rate: float, mean_span: float) -> int:
    """Longest L whose span-corrupted pair fits a decoder window: L + 2 n_spans + 1 <= t."""
    for length in range(t, 1, -1):
        if length + 2 * span_counts(length, rate, mean_span)[1] + 1 <= t:
            return length
    raise ValueError(f"a window of t={t} is too short for span corruption; use t >= 8.")


def span_corruption_batch(x: torch.Tensor, tokenizer, rate: float = 0.15, mean_span: float = 3.0,
                          generator: torch.Generator | None = None):
    """Span corruption laid out for a decoder-only model as a prefix LM.

    Each row's first L tokens (L = :func:`span_source_length`) give seq = source + target
    (:func:`span_layout`); the model reads ``inputs = seq[:-1]`` (padded with [PAD] to T) with
    ``prefix_len = len(source)`` bidirectional and predicts ``labels = seq[1:]`` on the target part
    only (-100 elsewhere). Returns inputs (B, T), labels (B, T), prefix_len (B,).
    """
    _check_span_options(rate, mean_span)
    b, t = x.shape
    length = span_source_length(t, rate, mean_span)
    seq, source_len = span_layout(x[:, :length], tokenizer, rate, mean_span, generator)  # (B, S)
    n = seq.size(1) - 1  # S - 1 <= T
    inputs = torch.full_like(x, tokenizer.pad_id)  # (B, T)
    labels = torch.full_like(x, IGNORE_INDEX)  # (B, T)
    inputs[:, :n] = seq[:, :-1]
    labels[:, source_len - 1 : n] = seq[:, source_len:]  # the source is read, not predicted
    prefix_len = torch.full((b,), source_len, dtype=torch.long, device=x.device)  # (B,)
    return inputs, labels, prefix_len


def span_objective(model, x, y, ctx: ObjectiveContext) -> torch.Tensor:
    """Span corruption (rate = ctx.mask_rate, mean span 3) trained as a prefix LM."""
    inputs, labels, prefix_len = span_corruption_batch(x, ctx.tokenizer, ctx.mask_rate, 3.0,
                                                       ctx.generator)
    mask = prefix_lm_mask(prefix_len, x.size(1))  # (B, 1, T, T)
    key_padding = inputs != ctx.tokenizer.pad_id  # (B, T)
    return masked_lm_loss(model(inputs, mask=mask, key_padding=key_padding), labels)


# ------------------------------------------------------------------ sentence-pair objectives


def pair_loss(pair_logits: torch.Tensor, pair_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the pair head: pair_logits (B, 2), pair_labels (B,) with 1 = in order."""
    if pair_logits.dim() != 2 or pair_labels.shape != pair_logits.shape[:1]:
        raise ValueError(f"pair_loss expects logits (B, 2) and labels (B,); got "
                         f"{tuple(pair_logits.shape)} and {tuple(pair_labels.shape)}.")
    return F.cross_entropy(pair_logits.float(), pair_labels)


def combined_loss(mlm: torch.Tensor, pair: torch.Tensor, pair_weight: float) -> torch.Tensor:
    """BERT / ALBERT pretraining loss: L = L_MLM + lambda * L_pair (lambda = pair_weight)."""
    if pair_weight < 0:
        raise ValueError(f"pair_weight={pair_weight!r} is invalid: expected lambda >= 0.")
    return mlm + pair_weight * pair


def mlm_pair_losses(model, x, ctx: ObjectiveContext,
                    task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_MLM, L_pair) on one batch: B pairs of consecutive lines drawn from ``ctx.pair_text``
    (:meth:`lmlab.pairs.LinePairBank.sample`, B and T from the windows x (B, T)), masked, one
    forward pass; the pair head (``model.pair_head``, see :mod:`lmlab.heads`) reads the [CLS]
    hidden state. The pairs are whole lines, as BERT and ALBERT pair sentences: a segment cut
    through a word would let one bigram across the junction give the order away."""
    if not hasattr(model, "pair_head"):
        raise ValueError("this objective needs a model with a pair_head: build it with "
                         "lmlab.heads.transformer_with_pair_head(config).")
    bank = ctx.pair_bank(x.size(1))
    ids, pair_labels = bank.sample(x.size(0), task, ctx.tokenizer, x.size(1), ctx.generator)
    ids, pair_labels = ids.to(x.device), pair_labels.to(x.device)  # (B, T), (B,)
    inputs, labels = mask_tokens(ids, ctx.tokenizer, ctx.mask_rate, ctx.generator)
    if not (labels != IGNORE_INDEX).any():
        first_real = int((~ctx.tokenizer.is_special(ids[0])).nonzero()[0])
        labels[0, first_real] = ids[0, first_real]
    h = model.hidden(inputs, key_padding=ids != ctx.tokenizer.pad_id)  # (B, T, C)
    mlm = masked_lm_loss(model.lm_head(h), labels)
    return mlm, pair_loss(model.pair_head(h[:, 0]), pair_labels)  # [CLS] is position 0


def mlm_sop_objective(model, x, y, ctx: ObjectiveContext) -> torch.Tensor:
    """ALBERT: L_MLM + lambda * L_SOP."""
    return combined_loss(*mlm_pair_losses(model, x, ctx, "sop"), ctx.pair_weight)


def mlm_nsp_objective(model, x, y, ctx: ObjectiveContext) -> torch.Tensor:
    """BERT: L_MLM + lambda * L_NSP."""
    return combined_loss(*mlm_pair_losses(model, x, ctx, "nsp"), ctx.pair_weight)


# ------------------------------------------------------------------ distillation


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015):

        L = tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)),

    the KL summed over the vocabulary and averaged over positions. The tau^2 factor keeps the
    gradient's scale independent of tau (the soft-target gradients shrink as 1 / tau^2);
    write-ups that drop it silently weaken the distillation term as tau grows. Logits: (..., V).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError("student and teacher logits differ in shape: "
                         f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}.")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} is invalid: expected tau > 0.")
    v = student_logits.size(-1)
    log_p_s = F.log_softmax(student_logits.float().reshape(-1, v) / temperature, dim=-1)  # (N, V)
    log_p_t = F.log_softmax(teacher_logits.float().reshape(-1, v) / temperature, dim=-1)  # (N, V)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    return temperature**2 * kl


# ------------------------------------------------------------------ a common bug


def mlm_step(model, optimizer, x: torch.Tensor, ctx: ObjectiveContext, *,
             under_no_grad: bool = False) -> float:
    """One MLM training step: zero the gradients, L = MLM loss on ``x`` (B, T), backward, step.

    ``under_no_grad=True`` reproduces a bug found in widely copied tutorial code: the loss is
    computed inside ``torch.no_grad()``, so it has no graph (``loss.requires_grad`` is False);
    the ``if loss.requires_grad`` guard that keeps backward from raising hides it, and
    ``optimizer.step()`` finds no gradients: every parameter stays exactly as it was.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad() if under_no_grad else contextlib.nullcontext():
        loss = mlm_objective(model, x, None, ctx)
    if loss.requires_grad:
        loss.backward()
    optimizer.step()
    return float(loss.detach())


@dataclass(frozen=True)
class Objective:
    """Everything the package knows about one pretraining objective."""

    name: str
    loss: Callable  # (model, x (B, T), y (B, T), ctx: ObjectiveContext) -> scalar loss
    causal: bool | None
    """The ``ModelConfig.causal`` it needs: ``True`` (CLM: with a bidirectional model each
    position would see the token it predicts, a leak, not learning), ``False`` (the MLM family: a
    causal model cannot read the right-hand context of a mask), ``None`` (prefix LM and span
    corruption pass their own prefix mask and fit either)."""
    pair_head: bool  # trains a pair head (lmlab.heads) next to the LM head; reads pair_weight
    uses_mask_rate: bool  # reads TrainConfig.mask_rate
    predicts: str  # what its loss scores, in words (unit: nats per predicted character)

    @property
    def through_forward(self) -> bool:
        """Whether its loss reaches the model only through ``model(...)``, so that
        DistributedDataParallel, which synchronizes the gradients of what runs through its
        ``forward``, trains it: every objective but the pair ones, which call ``model.hidden``
        and the pair head directly."""
        return not self.pair_head

    @property
    def model_causal(self) -> bool:
        """The attention of the model the chapter trains it with: the one it needs, causal where
        either fits."""
        return True if self.causal is None else self.causal


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("clm", clm_objective, causal=True, pair_head=False, uses_mask_rate=False,
              predicts="every next character, from the characters before it"),
    Objective("prefix", prefix_lm_objective, causal=None, pair_head=False, uses_mask_rate=False,
              predicts="the characters after a random prefix; the prefix is read both ways"),
    Objective("span", span_objective, causal=None, pair_head=False, uses_mask_rate=True,
              predicts="the removed spans, after reading the corrupted text both ways"),
    Objective("mlm", mlm_objective, causal=False, pair_head=False, uses_mask_rate=True,
              predicts="the selected (masked) characters, from both sides"),
    Objective("mlm_sop", mlm_sop_objective, causal=False, pair_head=True, uses_mask_rate=True,
              predicts="the masked characters, plus whether two segments are in order"),
    Objective("mlm_nsp", mlm_nsp_objective, causal=False, pair_head=True, uses_mask_rate=True,
              predicts="the masked characters, plus whether segment B follows A"),
)}
"""The objectives by name, in the chapter's order (causal first)."""


def check_objective_fits(objective: str, causal: bool) -> None:
    """ValueError naming both when ``objective`` cannot train a model with ``causal``."""
    needs = OBJECTIVES[objective].causal if objective in OBJECTIVES else None
    if needs is None or needs == causal:
        return
    model = "causal (GPT-style)" if causal else "bidirectional (BERT-style)"
    why = ("each position must see only the tokens before the one it predicts" if needs
           else "it reads both sides of each masked token")
    raise ValueError(
        f"objective={objective!r} does not fit a {model} model (ModelConfig.causal={causal}): "
        f"{why}. Build the model with ModelConfig(causal={needs}), or pick an objective that "
        "fits.")

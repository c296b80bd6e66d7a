"""Fine-tuning a pretrained model: which weights train, at which learning rate, on what data.

**Classification with a head** (BERT-style, Devlin et al. 2019). The parameters are cut into
layer groups, bottom to top: the embeddings, each block, then the final LayerNorm with the task
head. Options, each from ULMFiT (Howard & Ruder, 2018) or its relatives:

* ``freeze_below=k``: the embeddings and the lower k blocks never train;
* ``gradual=True``: gradual unfreezing: the top group trains from step 0, the next one down joins
  at step ``steps * 1 / G``, the one below at ``steps * 2 / G`` ... (G groups);
* ``lr_factor=f``: discriminative learning rates, ``lr_g = lr / f^(G - 1 - g)`` for group g (the
  top group gets ``lr``; ULMFiT used f = 2.6).

**Adapting a causal LM to one speaker** (:func:`adapt`). A speaker's lines are cut into pieces
that start at a line; the loss is the mean cross-entropy of each piece's characters 2..n (the
first has no context in the piece, so no method is scored on it). Methods: ``full`` (every weight),
``freeze`` (the lower ``freeze_below`` blocks and the embeddings frozen), ``probe`` (only a fresh,
untied output layer trains: a linear probe for the next character), ``lora``
(:mod:`lmlab.lora`), ``prompt`` (a soft prompt, :mod:`lmlab.prompts`) and ``scratch`` (the same
shape, random weights, trained on the speaker alone). ``mix=m`` trains on
``(1 - m) * loss_speaker + m * loss_general`` with general windows drawn from the pretraining
text (replay), rehearsal (Ratcliff 1990; Robins 1995), a remedy for the catastrophic forgetting
McCloskey & Cohen (1989) described.

Results the chapter and its explorer share are cached as JSON records in the experiment cache
(:func:`lmlab.experiments.cached_record`), keyed by the base run, the data, the settings, the
device type and lmlab's code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import BatchSampler, CharTokenizer, Corpus
from .device import SEED_OFFSETS
from .experiments import cached_record, spec_key
from .heads import SequenceClassifier, _check_labels, classifier_accuracy, classifier_step
from .history import column
from .lora import add_lora, trainable_parameters
from .model import Transformer
from .modes import eval_mode
from .pairs import speeches
from .prompts import IGNORE, SoftPrompt, init_ids_for, prompt_loss

METHODS = ("full", "freeze", "probe", "lora", "prompt", "scratch")


# ------------------------------------------------------------------ layer groups and freezing
def layer_groups(body: Transformer, head: nn.Module | None = None) -> list[list[nn.Parameter]]:
    """Parameters in groups, bottom to top: [embeddings], [block 0], ..., [block L-1],
    [final LayerNorm + ``head``] (+ an untied ``lm_head``). Each parameter appears once (a tied
    output layer is the embedding matrix, in the first group)."""
    seen: set[int] = set()

    def fresh(params) -> list[nn.Parameter]:
        out = []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    embed = list(body.tok_emb.parameters())
    if body.pos_emb is not None:
        embed += list(body.pos_emb.parameters())
    groups = [fresh(embed)] + [fresh(block.parameters()) for block in body.blocks]
    top = list(body.ln_f.parameters()) + list(body.lm_head.parameters())
    if head is not None:
        top += list(head.parameters())
    groups.append(fresh(top))
    return groups


def set_trainable(params, trainable: bool) -> None:
    """``requires_grad = trainable`` for every parameter in ``params``."""
    for p in params:
        p.requires_grad_(trainable)


def freeze_lower(body: Transformer, k: int) -> None:
    """Freeze the embeddings and blocks 0 .. k-1 of ``body`` (k = 0 freezes nothing)."""
    if not 0 <= k <= body.config.n_layer:
        raise ValueError(f"freeze_below={k} is invalid: expected 0 .. n_layer="
                         f"{body.config.n_layer} blocks.")
    if k > 0:
        for group in layer_groups(body)[: k + 1]:
            set_trainable(group, False)


def discriminative_lrs(n_groups: int, lr: float, factor: float) -> list[float]:
    """lr_g = lr / factor^(n_groups - 1 - g), bottom group first (factor 1: all ``lr``)."""
    if n_groups < 1 or factor <= 0:
        raise ValueError(f"n_groups={n_groups} and factor={factor} must be >= 1 and > 0.")
    return [lr / factor ** (n_groups - 1 - g) for g in range(n_groups)]


def unfreeze_steps(n_groups: int, steps: int) -> list[int]:
    """Gradual unfreezing: the step at which group g (bottom first) starts to train,
    (n_groups - 1 - g) * steps // n_groups: the top at 0, one group more every steps / n_groups."""
    return [(n_groups - 1 - g) * steps // n_groups for g in range(n_groups)]


# ------------------------------------------------------------------ classification with a head
def fine_tune_classifier(body: Transformer, ids: torch.Tensor, key_padding: torch.Tensor,
                         labels: torch.Tensor, n_classes: int, *, steps: int = 100,
                         batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.01,
                         pooling: str = "mean", freeze_below: int = 0, gradual: bool = False,
                         lr_factor: float = 1.0, seed: int = 0,
                         device: str | torch.device = "cpu") -> SequenceClassifier:
    """Train a copy of ``body`` plus a linear head with AdamW on cross-entropy for ``steps``
    minibatches (seeded), with the options of the module docstring. With their defaults this is
    exactly :func:`lmlab.heads.fine_tune`. Returns the classifier in eval mode, its frozen
    parameters untouched."""
    _check_labels(ids, labels, n_classes)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must both be >= 1.")
    if not 0 <= freeze_below <= body.config.n_layer:
        raise ValueError(f"freeze_below={freeze_below} is invalid: expected 0 .. n_layer="
                         f"{body.config.n_layer} blocks.")
    torch.manual_seed(seed)
    model = SequenceClassifier(copy.deepcopy(body), n_classes, pooling=pooling).to(device)
    set_trainable(model.parameters(), True)
    groups = layer_groups(model.body, model.head)
    lrs = discriminative_lrs(len(groups), lr, lr_factor)
    frozen = set(range(freeze_below + 1)) if freeze_below > 0 else set()
    starts = unfreeze_steps(len(groups), steps) if gradual else [0] * len(groups)
    live = [g for g in range(len(groups)) if g not in frozen]
    opt = torch.optim.AdamW([{"params": groups[g], "lr": lrs[g]} for g in live],
                            lr=lr, weight_decay=weight_decay)
    for g in frozen:
        set_trainable(groups[g], False)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        for g in live:  # a group that does not train yet has no gradient: AdamW skips it
            set_trainable(groups[g], step >= starts[g])
        idx = torch.randint(0, len(ids), (batch_size,), generator=gen)  # (b,)
        classifier_step(model, opt, ids[idx], key_padding[idx], labels[idx])
    set_trainable(model.parameters(), True)
    return model.eval()


# ------------------------------------------------------------------ one speaker's text
def line_pieces(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters that each start at a line:
    whole lines are packed greedily (joined by newlines); a longer line is cut."""
    if max_chars < 2:
        raise ValueError(f"max_chars={max_chars} is invalid: expected at least 2.")
    pieces, current = [], ""
    for line in text.split("\n"):
        line = line[:max_chars]
        joined = f"{current}\n{line}" if current else line
        if len(joined) <= max_chars:
            current = joined
        else:
            pieces.append(current)
            current = line
    if current:
        pieces.append(current)
    return [p for p in pieces if len(p) >= 2]


@dataclass
class SpeakerSplit:
    """One speaker's speeches cut into pieces (``train``: the earlier speeches, ``held_out``: the
    later ones) and everyone else's speeches (``general``), from one stretch of text."""

    speaker: str
    train: list[str]
    held_out: list[str]
    general: str


def speaker_split(text: str, max_chars: int, speaker: str | None = None,
                  held_out_fraction: float = 0.2) -> SpeakerSplit:
    """The speeches of ``speaker`` (default: whoever speaks the most characters in ``text``), the
    last ``held_out_fraction`` of them held out, each cut by :func:`line_pieces`."""
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction={held_out_fraction!r} is invalid: expected (0, 1).")
    records = speeches(text)
    if speaker is None:
        chars: dict[str, int] = {}
        for s in records:
            chars[s.speaker] = chars.get(s.speaker, 0) + len(s.text)
        speaker = max(chars, key=chars.get)
    own = [s for s in records if s.speaker == speaker]
    if len(own) < 2:
        raise ValueError(f"{speaker!r} has {len(own)} speeches in this text: pick a speaker with "
                         "at least 2.")
    n_held = max(1, round(len(own) * held_out_fraction))
    cut = lambda group: [p for s in group for p in line_pieces(s.text, max_chars)]  # noqa: E731
    general = "\n\n".join(f"{s.speaker}:\n{s.text}" for s in records if s.speaker != speaker)
    return SpeakerSplit(speaker, cut(own[:-n_held]), cut(own[-n_held:]), general)


def encode_pieces(pieces: list[str], tokenizer: CharTokenizer,
                  t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x (N, t) padded with [PAD] and targets y (N, t): y[:, i] = x[:, i + 1] for the
    piece's characters 2..n, ``IGNORE`` at the last position and over padding."""
    x = torch.full((len(pieces), t), tokenizer.pad_id, dtype=torch.long)  # (N, t)
    y = torch.full((len(pieces), t), IGNORE, dtype=torch.long)  # (N, t)
    for i, piece in enumerate(pieces):
        enc = torch.tensor(tokenizer.encode(piece[:t]))
        x[i, : len(enc)] = enc
        y[i, : len(enc) - 1] = enc[1:]
    return x, y


@dataclass
class SpeakerTask:
    """Tensors of one speaker task: pieces to train on and held out, fixed batches of the general
    text (for forgetting), the pretraining text (for replay) and the hard prompt "NAME:\\n"."""

    speaker: str
    train_x: torch.Tensor  # (N, t)
    train_y: torch.Tensor  # (N, t)
    held_x: torch.Tensor  # (M, t)
    held_y: torch.Tensor  # (M, t)
    general: list[tuple[torch.Tensor, torch.Tensor]]  # fixed (B, t) windows
    replay: torch.Tensor  # (n,) token ids of the pretraining text
    hard_prompt: torch.Tensor  # (k,) ids of "NAME:\n"

    @property
    def t(self) -> int:
        return self.train_x.size(1)

    def fingerprint(self) -> str:
        """sha256 over every tensor and the speaker: two tasks with the same print are the same."""
        h = hashlib.sha256(self.speaker.encode())
        tensors = [self.train_x, self.train_y, self.held_x, self.held_y, self.replay,
                   self.hard_prompt, *(t for batch in self.general for t in batch)]
        for tensor in tensors:
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()[:20]


def speaker_task(corpus: Corpus, t: int, *, speaker: str | None = None,
                 held_out_fraction: float = 0.2, general_batches: int = 4,
                 batch_size: int = 32, seed: int = 0) -> SpeakerTask:
    """The speaker task on the corpus's **validation** text, which pretraining never saw: the
    speaker's pieces (at most ``t`` characters), ``general_batches`` fixed batches of windows of
    everyone else's speeches there, and the training text for replay."""
    split = speaker_split(corpus.tokenizer.decode(corpus.val), t, speaker, held_out_fraction)
    tok = corpus.tokenizer
    train_x, train_y = encode_pieces(split.train, tok, t)
    held_x, held_y = encode_pieces(split.held_out, tok, t)
    general_ids = torch.tensor(tok.encode(split.general), dtype=torch.long)
    sampler = BatchSampler(general_ids, t, batch_size, "cpu", torch.Generator().manual_seed(seed))
    general = [sampler.sample() for _ in range(general_batches)]
    hard = torch.tensor(tok.encode(f"{split.speaker}:\n"), dtype=torch.long)
    return SpeakerTask(split.speaker, train_x, train_y, held_x, held_y, general, corpus.train,
                       hard)


# ------------------------------------------------------------------ adapting the LM
@dataclass(frozen=True)
class AdaptConfig:
    """One way to adapt the base model to the speaker (see the module docstring)."""

    method: str = "full"
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    freeze_below: int = 0  # method "freeze": the embeddings and this many lower blocks
    rank: int = 4  # method "lora"
    prompt_length: int = 8  # method "prompt"
    mix: float = 0.0  # weight of replayed pretraining text in the loss
    n_train: int | None = None  # use only the first n training pieces (None: all)
    eval_every: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is invalid: expected one of {METHODS}.")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError(f"steps={self.steps}, batch_size={self.batch_size} and eval_every="
                             f"{self.eval_every} must all be >= 1.")
        if not 0 <= self.mix < 1:
            raise ValueError(f"mix={self.mix!r} is invalid: expected a fraction in [0, 1).")
        if self.method == "prompt" and self.prompt_length < 1:
            raise ValueError(f"prompt_length={self.prompt_length} is invalid: a soft prompt "
                             "needs at least 1 vector (length 0 is the base model).")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train={self.n_train} is invalid: expected None or >= 1.")

    @property
    def label(self) -> str:
        extra = {"freeze": f" below {self.freeze_below}", "lora": f" r={self.rank}",
                 "prompt": f" k={self.prompt_length}"}.get(self.method, "")
        mix = f", mix {self.mix:g}" if self.mix else ""
        return f"{self.method}{extra}, lr {self.lr:g}{mix}"


@dataclass
class AdaptResult:
    """History rows ``{step, speaker_loss, general_loss}`` (step 0: before training), the number
    of trainable parameters, and whether it was read from the cache."""

    config: AdaptConfig
    history: list[dict]
    trainable: int
    cached: bool = False

    def column(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key`` (:func:`lmlab.history.column`)."""
        return column(self.history, key)

    @property
    def final(self) -> dict:
        return self.history[-1]

    @property
    def label(self) -> str:
        return self.config.label


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


@torch.no_grad()
def speaker_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 prompt: torch.Tensor | None = None, batch_size: int = 128) -> float:
    """Mean cross-entropy per scored character of pieces x, y (B, t) read after ``prompt``
    (k, C) input vectors (a hard prompt's embeddings, a soft prompt, or None), in eval mode."""
    total, count = 0.0, 0
    device = model_device(model)
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            n = int((yb != IGNORE).sum())
            total += float(prompt_loss(model, xb, yb, prompt)) * n
            count += n
    return total / count


@torch.no_grad()
def general_loss(model: nn.Module, batches) -> float:
    """Mean next-character cross-entropy over fixed (x, y) windows, in eval mode."""
    device = model_device(model)
    with eval_mode(model):
        return sum(float(F.cross_entropy(model(x.to(device)).flatten(0, 1).float(),
                                         y.to(device).flatten()))
                   for x, y in batches) / len(batches)


def _untied_probe(model: Transformer) -> Transformer:
    """Freeze everything, then give the model a fresh output layer (a copy of the tied one, so
    the outputs are unchanged) that alone trains."""
    set_trainable(model.parameters(), False)
    head = nn.Linear(model.config.d_model, model.config.vocab_size, bias=False,
                     device=model_device(model))
    head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    model.lm_head = head
    return model


def prepare(base: Transformer, task: SpeakerTask, config: AdaptConfig,
            ) -> tuple[Transformer, SoftPrompt | None]:
    """The model (and soft prompt) ``config.method`` trains, starting from ``base`` (untouched):
    before training, every method but ``scratch`` computes exactly what ``base`` computes."""
    model, prompt = copy.deepcopy(base), None
    set_trainable(model.parameters(), True)
    if config.method == "freeze":
        freeze_lower(model, config.freeze_below)
    elif config.method == "probe":
        model = _untied_probe(model)
    elif config.method == "lora":
        model = add_lora(base, config.rank, seed=config.seed)
    elif config.method == "prompt":
        set_trainable(model.parameters(), False)
        prompt = SoftPrompt(model, init_ids_for(task.hard_prompt, config.prompt_length))
    elif config.method == "scratch":
        torch.manual_seed(config.seed)
        model = Transformer(base.config).to(model_device(base))
    return model, prompt


def adapt(base: Transformer, task: SpeakerTask, config: AdaptConfig,
          callback: Callable[[dict], None] | None = None,
          ) -> tuple[AdaptResult, Transformer, SoftPrompt | None]:
    """Train what ``config.method`` trains with AdamW (constant lr) on random minibatches of the
    speaker's pieces; evaluate the held-out speaker loss (with the soft prompt, for ``prompt``)
    and the general loss (never with a prompt) at step 0 and every ``eval_every`` steps. Runs on
    the device of ``base``."""
    model, prompt = prepare(base, task, config)
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(prompt.parameters()) if prompt is not None else []
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n = len(task.train_x) if config.n_train is None else min(config.n_train, len(task.train_x))
    gen = torch.Generator().manual_seed(config.seed)
    device = model_device(base)
    replay = (BatchSampler(task.replay, task.t, config.batch_size, device,
                           torch.Generator(device=device).manual_seed(
                               config.seed + SEED_OFFSETS["replay_batches"]))
              if config.mix > 0 else None)

    def row(step: int) -> dict:
        vectors = prompt() if prompt is not None else None
        r = {"step": step, "speaker_loss": speaker_loss(model, task.held_x, task.held_y, vectors),
             "general_loss": general_loss(model, task.general)}
        if callback is not None:
            callback(r)
        return r

    history = [row(0)]
    model.train()
    for step in range(1, config.steps + 1):
        idx = torch.randint(0, n, (config.batch_size,), generator=gen)  # (b,)
        vectors = prompt() if prompt is not None else None
        loss = prompt_loss(model, task.train_x[idx].to(device), task.train_y[idx].to(device),
                           vectors)
        if replay is not None:
            xr, yr = replay.sample()  # (b, t), (b, t)
            general = F.cross_entropy(model(xr).flatten(0, 1).float(), yr.flatten())
            loss = (1 - config.mix) * loss + config.mix * general
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % config.eval_every == 0 or step == config.steps:
            history.append(row(step))
            model.train()
    model.eval()
    return AdaptResult(config, history, trainable), model, prompt


# ------------------------------------------------------------------ the cache
# records kept with experiments.cached_record, keyed by experiments.spec_key (kind, what the
# result depends on, lmlab's code), as every cached result that is not one training history


def adaptation(base: Transformer, base_key: str, task: SpeakerTask, config: AdaptConfig,
               callback: Callable[[dict], None] | None = None) -> AdaptResult:
    """:func:`adapt`, cached: ``base_key`` names the base weights (the pretrained run's key)."""
    key = {"base": base_key, "task": task.fingerprint(), "config": dataclasses.asdict(config),
           "device": model_device(base).type}

    def compute() -> dict:
        result, _, _ = adapt(base, task, config, callback)
        return {"history": result.history, "trainable": result.trainable}

    value, cached = cached_record(spec_key("adapt", key), compute)
    return AdaptResult(config, value["history"], value["trainable"], cached)


def classification_accuracy(base: Transformer, base_key: str, train, test, method: str, *,
                            seed: int = 0, **options) -> float:
    """Test accuracy of :func:`fine_tune_classifier` from ``base`` on SpeakerData ``train`` /
    ``test``, cached under ``base_key`` (naming the weights: a pretrained run's key, or e.g.
    ``"scratch 0"`` for a freshly seeded model), ``method`` (a name for the options) and the
    seed."""

    h = hashlib.sha256()
    for tensor in (train.ids, train.labels, test.ids, test.labels):
        h.update(tensor.contiguous().numpy().tobytes())
    device = model_device(base)
    key = {"base": base_key, "data": h.hexdigest()[:20], "method": method, "seed": seed,
           "options": options, "device": device.type}

    def compute() -> dict:
        model = fine_tune_classifier(base, train.ids, train.key_padding, train.labels,
                                     len(train.names), seed=seed, device=device, **options)
        return {"accuracy": classifier_accuracy(model, test.ids, test.key_padding, test.labels)}

    return cached_record(spec_key("classify", key), compute)[0]["accuracy"]


def count_trainable(model: nn.Module, prompt: nn.Module | None = None) -> int:
    """Trainable numbers of an adapted model (and its soft prompt)."""
    return trainable_parameters(model) + (trainable_parameters(prompt) if prompt else 0)


# two-sided 95% quantiles t_{0.975, df} of Student's t, df = 1 .. 30 (standard tables)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_interval(values) -> tuple[float, float]:
    """(mean, half-width) of the 95% Student-t confidence interval of the mean over n seeds:
    half = t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation (n - 1 in the
    denominator); for 2 <= n <= 31."""
    x = torch.as_tensor(list(values), dtype=torch.float64)
    n = len(x)
    if not 2 <= n <= len(T_975) + 1:
        raise ValueError(f"{n} values: a confidence interval needs 2 to {len(T_975) + 1} seeds.")
    return float(x.mean()), T_975[n - 2] * float(x.std(unbiased=True)) / n ** 0.5

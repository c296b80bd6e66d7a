"""Fine-tuning a language model as a policy: REINFORCE with a baseline and a KL leash.

A causal LM is a policy: after a prompt x it samples a continuation y = (y_1 .. y_n) with
probability pi(y | x) = prod_t pi(y_t | x, y_<t). For a reward R(y), the policy-gradient theorem
in its simplest form (REINFORCE; Williams, 1992) gives an unbiased estimate from samples:

    grad_theta E_y[R(y)] = E_y[(R(y) - b) grad_theta log pi(y | x)]

for any baseline b that does not depend on y (E[grad log pi] = 0); a b close to E[R] makes the
estimate's variance smaller. Here b is the mean reward of the *other* samples in the batch
("leave-one-out", unbiased because it is independent of the sample it corrects).

Left alone, the policy finds whatever maximizes R, fluent or not ("reward hacking"). RLHF-style
fine-tuning (Ziegler et al., 2019) keeps it near the pretrained reference pi_ref:

    J(theta) = E_y[R(y)] - beta * KL(pi || pi_ref),

with the KL estimated per sample by log pi(y) - log pi_ref(y),

so each sample is scored with the shaped reward R(y) - beta (log pi(y) - log pi_ref(y)), a
constant in the gradient.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .device import SEED_OFFSETS, pick_device
from .experiments import Result, cached_record, spec_key
from .generate import generate_ids

BASELINES = ("none", "leave_one_out")


def sequence_logprob(model: nn.Module, prompt: torch.Tensor, completion: torch.Tensor,
                     allowed: int | None = None) -> torch.Tensor:
    """log pi(y | x) = sum_t log pi(y_t | x, y_<t) for each row: prompt (B, T0), completion
    (B, n) -> (B,). Differentiable; the whole sequence must fit the model's context.
    ``allowed``: the policy samples only ids < allowed (the softmax is over those), as
    :func:`lmlab.generate.generate_ids` does."""
    if prompt.size(0) != completion.size(0):
        raise ValueError(f"prompt has {prompt.size(0)} rows but completion {completion.size(0)}.")
    t0, n = prompt.size(1), completion.size(1)
    block = model.config.block_size
    if t0 < 1 or n < 1 or t0 + n - 1 > block:
        raise ValueError(f"prompt length {t0} + completion length {n} - 1 must be in "
                         f"[1, block_size={block}]: shorten the completion or the prompt.")
    seq = torch.cat([prompt, completion], dim=1)  # (B, T0 + n)
    logits = model(seq[:, :-1])[:, t0 - 1:]  # (B, n, V): the positions that predict y_1 .. y_n
    if allowed is not None:
        logits = logits[..., :allowed]
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, completion[..., None]).squeeze(-1).sum(-1)  # (B,)


def leave_one_out_baseline(reward: torch.Tensor) -> torch.Tensor:
    """b_i = mean of the other rewards, (sum_j R_j - R_i) / (B - 1): (B,) -> (B,)."""
    if reward.numel() < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 samples per batch.")
    return (reward.sum() - reward) / (reward.numel() - 1)


def reinforce_loss(logprob: torch.Tensor, reward: torch.Tensor,
                   baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The surrogate whose gradient is the REINFORCE estimate of -grad E[R]:

        L = -(1/B) sum_i (R_i - b_i) log pi(y_i)        (R and b are constants)
    """
    advantage = (reward - baseline).detach()  # (B,)
    return -(advantage * logprob).mean()


def kl_shaped_reward(reward: torch.Tensor, logprob: torch.Tensor, ref_logprob: torch.Tensor,
                     beta: float) -> torch.Tensor:
    """R - beta (log pi(y) - log pi_ref(y)), detached: the per-sample KL-penalized reward."""
    return (reward - beta * (logprob - ref_logprob)).detach()


def letter_free_reward(texts: list[str], letter: str = "e") -> torch.Tensor:
    """Fraction of a sample's letters that are not ``letter`` (either case): (B,) in [0, 1].
    Samples with no letter at all score 0, so emitting only spaces and punctuation pays nothing."""
    scores = []
    for text in texts:
        letters = [c for c in text.lower() if c.isalpha()]
        scores.append(sum(c != letter for c in letters) / len(letters) if letters else 0.0)
    return torch.tensor(scores)


@dataclass
class PolicyGradientConfig:
    """What :func:`reinforce_finetune` does each step: ``batch`` samples of ``length`` new
    characters after ``prompt``, shaped reward with ``beta``, one AdamW step at ``lr``."""

    prompt: str = "\n"
    length: int = 48
    batch: int = 16
    steps: int = 60
    lr: float = 3e-4
    beta: float = 0.1
    baseline: str = "leave_one_out"
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline={self.baseline!r} is invalid: expected one of "
                             f"{BASELINES}.")
        for name in ("length", "batch", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: expected an integer >= 1.")
        if self.baseline == "leave_one_out" and self.batch < 2:
            raise ValueError("baseline='leave_one_out' needs batch >= 2.")
        if not self.lr > 0 or not self.beta >= 0:
            raise ValueError(f"lr={self.lr!r}, beta={self.beta!r}: expected lr > 0, beta >= 0.")
        if self.temperature != 1.0:
            # the samples' log-probabilities are scored by the policy at T = 1: samples drawn at
            # another temperature would make the REINFORCE gradient and the KL estimate biased
            raise ValueError(f"temperature={self.temperature!r} is invalid: the policy gradient "
                             "needs samples from the policy itself (temperature=1.0).")


def sample_completions(policy: nn.Module, prompt: torch.Tensor, length: int,
                       generator: torch.Generator, temperature: float = 1.0,
                       allowed: int | None = None) -> torch.Tensor:
    """(B, T0) prompts -> (B, length) sampled continuations (no gradient)."""
    with torch.no_grad():
        out = generate_ids(policy, prompt, length, temperature=temperature,
                           generator=generator, allowed=allowed)
    return out[:, prompt.size(1):]  # (B, length)


def reinforce_finetune(policy: nn.Module, tokenizer, reward_fn: Callable[[list[str]], torch.Tensor],
                       config: PolicyGradientConfig, reference: nn.Module | None = None,
                       callback: Callable[[dict], None] | None = None):
    """Fine-tune a copy of ``policy`` with REINFORCE on ``reward_fn`` (texts -> (B,) rewards),
    leashed to ``reference`` (default: the policy as given) by ``config.beta``.

    Returns (tuned model, history rows: step, reward, kl, shaped, ref_logprob per character).
    """
    device = next(policy.parameters()).device
    reference = copy.deepcopy(policy if reference is None else reference).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    tuned = copy.deepcopy(policy)
    tuned.train()
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=0.0)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    torch.manual_seed(config.seed)
    prompt_ids = torch.tensor([tokenizer.encode(config.prompt)] * config.batch, device=device)
    allowed = tokenizer.n_chars  # sample and score characters only, never special tokens
    history = []
    for step in range(1, config.steps + 1):
        tuned.eval()  # sample without dropout; the gradient pass below uses the same mode
        completion = sample_completions(tuned, prompt_ids, config.length, generator,
                                        config.temperature, allowed)  # (B, n)
        texts = [tokenizer.decode(row.tolist()) for row in completion.cpu()]
        reward = reward_fn(texts).to(device).float()  # (B,)
        logprob = sequence_logprob(tuned, prompt_ids, completion, allowed)  # (B,)
        with torch.no_grad():
            ref_logprob = sequence_logprob(reference, prompt_ids, completion, allowed)  # (B,)
        shaped = kl_shaped_reward(reward, logprob, ref_logprob, config.beta)
        baseline = leave_one_out_baseline(shaped) if config.baseline == "leave_one_out" else 0.0
        loss = reinforce_loss(logprob, shaped, baseline)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        row = {"step": step, "reward": float(reward.mean()),
               "kl": float((logprob.detach() - ref_logprob).mean()),
               "shaped": float(shaped.mean()),
               "ref_logprob_per_char": float(ref_logprob.mean()) / config.length}
        history.append(row)
        if callback is not None:
            callback(row)
    return tuned.eval(), history


def gradient_variance(policy: nn.Module, prompt: torch.Tensor, completions: list[torch.Tensor],
                      rewards: list[torch.Tensor], baseline: str, allowed: int | None = None
                      ) -> float:
    """Total variance (sum over parameters) of the REINFORCE gradient estimate across the given
    independent batches (each (B, n) with its (B,) rewards): how noisy one step's gradient is."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r} is invalid: expected one of {BASELINES}.")
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = []
    for completion, reward in zip(completions, rewards, strict=True):
        logprob = sequence_logprob(policy, prompt[: completion.size(0)], completion, allowed)
        b = leave_one_out_baseline(reward) if baseline == "leave_one_out" else 0.0
        g = torch.autograd.grad(reinforce_loss(logprob, reward, b), params)
        grads.append(torch.cat([x.flatten() for x in g]))
    stacked = torch.stack(grads)  # (K, P)
    return float(stacked.var(dim=0, unbiased=True).sum())


def sampled_batches(policy: nn.Module, tokenizer, reward_fn: Callable[[list[str]], torch.Tensor],
                    config: PolicyGradientConfig, k: int, seed: int
                    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``k`` independent batches of ``config.batch`` samples of the policy as it is, with their
    rewards: (prompt ids (B, T0), k completions (B, n), k rewards (B,)), the input of
    :func:`gradient_variance`."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.tensor([tokenizer.encode(config.prompt)] * config.batch, device=device)
    completions, rewards = [], []
    for _ in range(k):
        completion = sample_completions(policy, prompt, config.length, generator,
                                        config.temperature, tokenizer.n_chars)  # (B, n)
        completions.append(completion)
        rewards.append(reward_fn([tokenizer.decode(r.tolist()) for r in completion.cpu()])
                       .to(device).float())
    return prompt, completions, rewards


def policy_report(policy: nn.Module, reference: nn.Module, tokenizer,
                  reward_fn: Callable[[list[str]], torch.Tensor], config: PolicyGradientConfig,
                  n: int, seed: int) -> dict:
    """``n`` samples of ``policy`` after ``config.prompt`` (fixed seed) and what they score: the
    mean reward, and the mean log-likelihood per character under ``reference``
    (sum_t log pi_ref(y_t | y_<t) / length): how much the text still looks like what the
    reference model writes."""
    cfg = dataclasses.replace(config, batch=n)
    prompt, (completion,), (reward,) = sampled_batches(policy, tokenizer, reward_fn, cfg, 1, seed)
    with torch.no_grad():
        ref = sequence_logprob(reference, prompt, completion, tokenizer.n_chars)  # (n,)
    return {"texts": [tokenizer.decode(r.tolist()) for r in completion.cpu()],
            "reward": float(reward.mean()),
            "ref_logprob_per_char": float(ref.mean()) / config.length}


def letter_free_run(base: Result, tokenizer, config: PolicyGradientConfig, *, letter: str = "e",
                    n_report: int = 32, callback: Callable[[dict], None] | None = None) -> dict:
    """:func:`reinforce_finetune` of the model of run ``base`` on :func:`letter_free_reward`
    (``letter``), leashed to that same model, cached on disk by the base run's key, the config
    and the letter. Returns {"history": rows of reinforce_finetune, "before": and "after":
    :func:`policy_report` of the base model and of the tuned one on ``n_report`` samples drawn
    with the same seed}."""
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"letter={letter!r} is invalid: expected one letter, e.g. 'e'.")

    def reward_fn(texts):
        return letter_free_reward(texts, letter)

    def compute() -> dict:
        reference = base.load_model().to(pick_device())
        rows: list[dict] = []

        def record(row):
            rows.append(row)
            if callback is not None:
                callback(row)

        try:
            tuned, history = reinforce_finetune(reference, tokenizer, reward_fn, config,
                                                callback=record)
        except KeyboardInterrupt:
            print(f"Interrupted after step {len(rows)}: the partial history is in the record's "
                  "'history' and nothing was cached; run the cell again to train it whole.")
            return {"history": rows, "info": {"interrupted": True}}
        seed = config.seed + SEED_OFFSETS["policy_report"]  # not any training batch
        return {"history": history, "info": {"interrupted": False},
                "before": policy_report(reference, reference, tokenizer, reward_fn, config,
                                        n_report, seed),
                "after": policy_report(tuned, reference, tokenizer, reward_fn, config,
                                       n_report, seed)}

    spec = {"base": base.key, "config": dataclasses.asdict(config), "letter": letter,
            "n_report": n_report}
    record, _ = cached_record(spec_key("reinforce", spec), compute)
    return record

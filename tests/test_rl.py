"""REINFORCE with a baseline and a KL leash, checked against hand-computed policy gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig, TrainConfig
from lmlab.data import CharTokenizer
from lmlab.experiments import run_experiment
from lmlab.model import Transformer
from lmlab.rl import (
    PolicyGradientConfig,
    gradient_variance,
    kl_shaped_reward,
    leave_one_out_baseline,
    letter_free_reward,
    letter_free_run,
    policy_report,
    reinforce_finetune,
    reinforce_loss,
    sampled_batches,
    sequence_logprob,
)

REWARD = torch.tensor([1.0, 3.0])  # a two-action bandit: R(a=0) = 1, R(a=1) = 3


def bandit_estimate(theta, n, baseline, seed):
    """REINFORCE estimate of grad E[R] for pi = softmax(theta) from n samples."""
    theta = theta.clone().requires_grad_(True)
    logp = F.log_softmax(theta, -1)  # (2,)
    g = torch.Generator().manual_seed(seed)
    actions = torch.multinomial(logp.exp().detach(), n, replacement=True, generator=g)  # (n,)
    reward = REWARD[actions]
    b = leave_one_out_baseline(reward) if baseline else 0.0
    (-reinforce_loss(logp[actions], reward, b)).backward()
    return theta.grad


def test_reinforce_matches_the_analytic_bandit_gradient():
    # For pi = softmax(theta): dE[R]/dtheta_j = p_j (R_j - E[R]).
    theta = torch.tensor([0.3, -0.2])
    p = F.softmax(theta, -1)
    exact = p * (REWARD - (p * REWARD).sum())  # (2,): here (-0.48, +0.48)
    n = 20_000
    for baseline in (False, True):
        est = bandit_estimate(theta, n, baseline, seed=0)
        # per-sample std of (R - b) d log p: at most max|R - b| = 3; 5 standard errors
        assert torch.allclose(est, exact, atol=5 * 3 / math.sqrt(n)), (baseline, est, exact)


def test_baseline_lowers_the_variance_without_moving_the_mean():
    theta = torch.tensor([0.3, -0.2])
    plain = torch.stack([bandit_estimate(theta, 8, False, s) for s in range(400)])
    based = torch.stack([bandit_estimate(theta, 8, True, s) for s in range(400)])
    # analytic per-sample variances of the theta_0 component: without a baseline
    # E[(R d log p)^2] - g^2 ~= 2.5, with b ~= E[R] ~= 0.64 (about 4x lower)
    assert based[:, 0].var() < 0.5 * plain[:, 0].var()
    assert torch.allclose(based.mean(0), plain.mean(0), atol=0.15)


def test_leave_one_out_baseline_by_hand():
    r = torch.tensor([1.0, 2.0, 6.0])
    torch.testing.assert_close(leave_one_out_baseline(r), torch.tensor([4.0, 3.5, 1.5]))
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_baseline(torch.tensor([1.0]))


def test_sampled_kl_estimate_is_unbiased():
    # E_{a ~ p}[log p(a) - log q(a)] = KL(p || q): the per-sample leash estimates the true KL.
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    a = torch.multinomial(p, 50_000, replacement=True, generator=g)
    per_sample = p.log()[a] - q.log()[a]
    sem = float(per_sample.std()) / math.sqrt(len(a))
    assert abs(float(per_sample.mean()) - exact) < 5 * sem
    logp = torch.zeros(3, requires_grad=True)
    shaped = kl_shaped_reward(torch.ones(3), logp, -torch.ones(3), 0.5)
    assert not shaped.requires_grad and torch.equal(shaped, torch.full((3,), 0.5))


def tiny_lm(seed=0, vocab=7, block=12):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2,
                                   d_model=16))


def test_sequence_logprob_equals_step_by_step_scoring():
    model = tiny_lm().eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 7, (3, 2), generator=g)
    completion = torch.randint(0, 5, (3, 4), generator=g)
    expected = torch.zeros(3)
    seq = torch.cat([prompt, completion], 1)
    for t in range(4):
        logits = model(seq[:, : 2 + t])[:, -1, :5]  # allowed = 5
        expected += F.log_softmax(logits, -1).gather(-1, completion[:, t : t + 1]).squeeze(-1)
    with torch.no_grad():
        got = sequence_logprob(model, prompt, completion, allowed=5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        sequence_logprob(model, prompt, torch.zeros(3, 12, dtype=torch.long))


def test_letter_free_reward():
    torch.testing.assert_close(letter_free_reward(["abe", "EEE", "!!", "xyz"]),
                               torch.tensor([2 / 3, 0.0, 0.0, 1.0]))


def test_reinforce_finetune_raises_the_reward():
    tokenizer = CharTokenizer.from_text("abe \n")
    model = tiny_lm(vocab=tokenizer.vocab_size, block=24)
    config = PolicyGradientConfig(prompt="\n", length=12, batch=16, steps=25, lr=3e-3, beta=0.0,
                                  seed=0)
    tuned, history = reinforce_finetune(model, tokenizer, letter_free_reward, config)
    first = sum(r["reward"] for r in history[:5]) / 5
    last = sum(r["reward"] for r in history[-5:]) / 5
    assert last > first + 0.1, (first, last)  # from ~2/3 (uniform over a, b, e) upward
    assert not any(p.requires_grad is False for p in model.parameters())  # original untouched
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # tuned == reference at step 1


def test_gradient_variance_is_lower_with_the_baseline():
    model = tiny_lm()
    g = torch.Generator().manual_seed(1)
    prompt = torch.zeros(8, 1, dtype=torch.long)
    completions = [torch.randint(0, 5, (8, 4), generator=g) for _ in range(12)]
    rewards = [(c == 0).float().mean(1) + 2.0 for c in completions]  # offset: b matters
    plain = gradient_variance(model, prompt, completions, rewards, "none", allowed=5)
    based = gradient_variance(model, prompt, completions, rewards, "leave_one_out", allowed=5)
    assert based < 0.5 * plain


def test_config_validation():
    with pytest.raises(ValueError, match="baseline="):
        PolicyGradientConfig(baseline="mean")
    with pytest.raises(ValueError, match="batch"):
        PolicyGradientConfig(batch=1)
    with pytest.raises(ValueError, match="length="):
        PolicyGradientConfig(length=0)
    # samples drawn at T != 1 but scored at T = 1 would bias the gradient and the KL estimate
    with pytest.raises(ValueError, match="temperature=0.7"):
        PolicyGradientConfig(temperature=0.7)
    with pytest.raises(ValueError, match="lr="):
        PolicyGradientConfig(lr=0.0)


def test_reinforce_surrogate_gradient_by_hand_on_a_two_token_policy():
    # pi = softmax(theta) at theta = 0: p = (1/2, 1/2); grad log pi(a) = onehot(a) - p.
    # Batch a = (0, 1, 1), R = (1, 3, 3): leave-one-out b = (3, 2, 2), R - b = (-2, 1, 1);
    # grad E[R] estimate = (1/3) sum_i (R_i - b_i) grad log pi(a_i)
    #                    = (1/3) [-2 (1/2, -1/2) + 2 (-1/2, 1/2)] = (-2/3, 2/3).
    theta = torch.zeros(2, requires_grad=True)
    actions = torch.tensor([0, 1, 1])
    reward = torch.tensor([1.0, 3.0, 3.0])
    loss = reinforce_loss(F.log_softmax(theta, -1)[actions], reward,
                          leave_one_out_baseline(reward))
    (grad,) = torch.autograd.grad(loss, theta)  # the surrogate's gradient is -grad E[R]
    torch.testing.assert_close(grad, torch.tensor([2 / 3, -2 / 3]))
    # without the baseline: (1/3) [1 (1/2, -1/2) + 6 (-1/2, 1/2)] = (-5/6, 5/6)
    (plain,) = torch.autograd.grad(reinforce_loss(F.log_softmax(theta, -1)[actions], reward),
                                   theta)
    torch.testing.assert_close(plain, torch.tensor([5 / 6, -5 / 6]))


def test_policy_report_scores_samples_under_the_reference():
    tokenizer = CharTokenizer.from_text("abe \n")
    model = tiny_lm(vocab=tokenizer.vocab_size, block=24).eval()
    config = PolicyGradientConfig(prompt="\n", length=6, batch=4)
    report = policy_report(model, model, tokenizer, letter_free_reward, config, n=5, seed=3)
    assert len(report["texts"]) == 5 and all(len(t) == 6 for t in report["texts"])
    torch.testing.assert_close(torch.tensor(report["reward"]),
                               letter_free_reward(report["texts"]).mean())
    prompt, (completion,), _ = sampled_batches(model, tokenizer, letter_free_reward,
                                               PolicyGradientConfig(prompt="\n", length=6,
                                                                    batch=5), 1, seed=3)
    assert [tokenizer.decode(r.tolist()) for r in completion] == report["texts"]  # same draws
    with torch.no_grad():
        ref = sequence_logprob(model, prompt, completion, tokenizer.n_chars)
    assert report["ref_logprob_per_char"] == pytest.approx(float(ref.mean()) / 6, rel=1e-6)


def test_letter_free_run_is_cached_and_raises_the_reward(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    tok = tiny_corpus.tokenizer
    mc = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=16)
    tc = TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=10,
                     eval_batches=1, progress=False, device="cpu")
    base = run_experiment(mc, tc, tiny_corpus, keep_model=True)
    config = PolicyGradientConfig(prompt="t", length=10, batch=16, steps=25, lr=3e-3, beta=0.0)
    first = letter_free_run(base, tok, config, n_report=8)
    again = letter_free_run(base, tok, config, n_report=8)
    assert first == again  # read back whole from the cache
    assert first["after"]["reward"] > first["before"]["reward"]
    other = letter_free_run(base, tok, config, letter="o", n_report=8)
    assert other["history"] != first["history"]  # the letter is part of the key
    with pytest.raises(ValueError, match="one letter"):
        letter_free_run(base, tok, config, letter="ee")

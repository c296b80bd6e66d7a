"""lmlab.regularization against PyTorch's own functions and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab import ModelConfig, TrainConfig, Transformer
from lmlab import regularization as R
from lmlab.evaluation import predict_probabilities
from lmlab.experiments import regularized_run
from lmlab.optim import build_optimizer

# ------------------------------------------------------------------------------ label smoothing


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.4])
def test_label_smoothing_equals_pytorch(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3  # (B, T, V)
    targets = torch.randint(0, 11, (3, 7), generator=g)  # (B, T)
    targets[0, :2] = -100  # ignored positions
    ours = R.label_smoothed_cross_entropy(logits, targets, eps)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=eps)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_label_smoothing_is_one_minus_eps_nll_plus_eps_mean_nll():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(50, 9, generator=g), torch.randint(0, 9, (50,), generator=g)
    eps = 0.2
    log_p = torch.log_softmax(logits, -1)
    by_hand = ((1 - eps) * -log_p[torch.arange(50), targets] + eps * -log_p.mean(-1)).mean()
    torch.testing.assert_close(R.label_smoothed_cross_entropy(logits, targets, eps), by_hand,
                               atol=1e-6, rtol=1e-6)


def test_others_spread_is_pytorch_with_rescaled_eps_and_differs_from_all():
    # q_y = 1 - eps, q_k = eps / (V-1)  <=>  PyTorch's rule with eps' = eps * V / (V - 1)
    g = torch.Generator().manual_seed(2)
    v, eps = 13, 0.1
    logits, targets = torch.randn(64, v, generator=g) * 2, torch.randint(0, v, (64,), generator=g)
    logits[torch.arange(64), targets] += 8.0  # a confident model: the two rules then differ most
    others = R.label_smoothed_cross_entropy(logits, targets, eps, spread="others")
    ref = F.cross_entropy(logits, targets, label_smoothing=eps * v / (v - 1))
    torch.testing.assert_close(others, ref, atol=1e-6, rtol=1e-6)
    assert abs(float(others) - float(R.label_smoothed_cross_entropy(logits, targets, eps))) > 1e-3


def test_smoothed_targets_rows_are_distributions():
    q = R.smoothed_targets(torch.tensor([0, 3, 4]), 5, 0.25)
    torch.testing.assert_close(q.sum(-1), torch.ones(3))
    assert q[1, 3] == pytest.approx(1 - 0.25 + 0.25 / 5) and q[1, 0] == pytest.approx(0.05)
    q2 = R.smoothed_targets(torch.tensor([2]), 5, 0.25, spread="others")
    assert q2[0, 2] == pytest.approx(0.75) and q2[0, 0] == pytest.approx(0.0625)


def test_loss_floor_is_entropy_of_q_reached_at_p_equal_q():
    v, eps = 10, 0.1
    targets = torch.tensor([1, 7, 3])
    q = R.smoothed_targets(targets, v, eps)
    at_q = R.label_smoothed_cross_entropy(q.log(), targets, eps)
    assert float(at_q) == pytest.approx(R.smoothed_loss_floor(v, eps), abs=1e-6)
    assert float(F.cross_entropy(q.log(), targets, label_smoothing=eps)) == pytest.approx(
        R.smoothed_loss_floor(v, eps), abs=1e-6)
    sharper = R.label_smoothed_cross_entropy(q.log() * 3, targets, eps)  # more confident than q
    assert float(sharper) > float(at_q) + 1e-3
    assert R.smoothed_loss_floor(v, 0.0) == 0.0


def test_label_smoothing_with_huge_logits_is_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0]])
    loss = R.label_smoothed_cross_entropy(logits, torch.tensor([0]), 0.1)
    assert torch.isfinite(loss)
    ref = F.cross_entropy(logits, torch.tensor([0]), label_smoothing=0.1)
    torch.testing.assert_close(loss, ref)


def test_label_smoothing_bad_input():
    with pytest.raises(ValueError, match="smoothing"):
        R.label_smoothed_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="spread"):
        R.smoothed_targets(torch.zeros(2, dtype=torch.long), 3, 0.1, spread="rest")
    with pytest.raises(ValueError, match="do not match"):
        R.label_smoothed_cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), 0.1)


# ---------------------------------------------------------------------------------- calibration


def test_ece_hand_computed():
    # bins of width 0.1: two predictions at confidence 0.9, one right  -> |0.5 - 0.9| * 2/4
    #                    two predictions at confidence 0.6, both right -> |1.0 - 0.6| * 2/4
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 0])
    bins = R.calibration_bins(probs, targets, n_bins=10)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert bins.accuracy[8] == pytest.approx(0.5) and bins.confidence[8] == pytest.approx(0.9)
    assert R.expected_calibration_error(probs, targets, n_bins=10) == pytest.approx(0.4, abs=1e-12)


def test_ece_extremes_and_calibrated_sample():
    one_hot = torch.eye(4)
    assert R.expected_calibration_error(one_hot, torch.arange(4)) == pytest.approx(0.0)
    assert R.expected_calibration_error(one_hot, (torch.arange(4) + 1) % 4) == pytest.approx(1.0)
    # a calibrated binary predictor: confidence c in [0.5, 1], correct with probability c
    g = torch.Generator().manual_seed(0)
    n = 200_000
    c = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < c
    probs = torch.stack([c, 1 - c], dim=1)
    targets = torch.where(correct, 0, 1)
    # sampling noise per bin ~ sqrt(c(1-c)/n_b) ~ 0.004 here; 0.01 leaves a wide margin
    assert R.expected_calibration_error(probs, targets) < 0.01
    overconfident = torch.stack([torch.full((n,), 0.99, dtype=torch.float64),
                                 torch.full((n,), 0.01, dtype=torch.float64)], 1)
    ece = R.expected_calibration_error(overconfident, targets)
    assert ece == pytest.approx(0.99 - correct.double().mean().item(), abs=1e-9)


def test_ece_bad_input():
    with pytest.raises(ValueError, match="probs"):
        R.expected_calibration_error(torch.ones(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        R.expected_calibration_error(torch.eye(2), torch.arange(2), n_bins=0)


def test_predict_probabilities_rows_sum_to_one_and_restore_mode():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, d_model=8,
                                    dropout=0.1))
    x = torch.randint(0, 7, (2, 8))
    probs, targets = predict_probabilities(model, [(x, x)])
    assert probs.shape == (16, 7) and targets.shape == (16,)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))
    assert model.training


# ------------------------------------------------------------------------------- weight decay


def _theta_and_grads(n_steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(6, generator=g, dtype=torch.float64)
    grads = [torch.randn(6, generator=g, dtype=torch.float64) * (1 + i) for i in range(n_steps)]
    return theta, grads


def _torch_steps(optimizer_cls, theta0, grads, **kwargs):
    p = torch.nn.Parameter(theta0.clone())
    opt = optimizer_cls([p], **kwargs)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    return p.detach()


def test_sgd_l2_equals_decoupled_equals_pytorch_and_autograd():
    theta0, grads = _theta_and_grads()
    lr, lam = 0.1, 0.3
    a, b = theta0.clone(), theta0.clone()
    for grad in grads:
        a = R.sgd_l2_step(a, grad, lr, lam)
        b = R.sgd_decoupled_step(b, grad, lr, lam)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)  # same update, up to rounding
    ref = _torch_steps(torch.optim.SGD, theta0, grads, lr=lr, weight_decay=lam)
    torch.testing.assert_close(a, ref, atol=1e-12, rtol=1e-12)
    # L2 in the loss, differentiated by autograd, then plain SGD
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.SGD([p], lr=lr)
    for grad in grads:
        opt.zero_grad()
        ((p * grad).sum() + R.l2_penalty([p], lam)).backward()  # d/dp = grad + lam * p
        opt.step()
    torch.testing.assert_close(p.detach(), a, atol=1e-12, rtol=1e-12)


def test_adam_l2_step_equals_torch_adam_weight_decay_and_autograd_penalty():
    theta0, grads = _theta_and_grads(seed=1)
    lr, lam, betas, eps = 1e-2, 0.5, (0.9, 0.999), 1e-8
    theta, state = theta0.clone(), {}
    for grad in grads:
        theta = R.adam_l2_step(theta, grad, state, lr, lam, betas, eps)
    ref = _torch_steps(torch.optim.Adam, theta0, grads, lr=lr, betas=betas, eps=eps,
                       weight_decay=lam)
    torch.testing.assert_close(theta, ref, atol=1e-12, rtol=1e-10)
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.Adam([p], lr=lr, betas=betas, eps=eps)
    for grad in grads:
        opt.zero_grad()
        ((p * grad).sum() + R.l2_penalty([p], lam)).backward()
        opt.step()
    torch.testing.assert_close(p.detach(), theta, atol=1e-12, rtol=1e-10)


def test_adamw_step_equals_torch_adamw_and_differs_from_adam_l2():
    theta0, grads = _theta_and_grads(seed=2)
    lr, lam, betas, eps = 1e-2, 0.5, (0.9, 0.95), 1e-8
    theta, state = theta0.clone(), {}
    for grad in grads:
        theta = R.adamw_step(theta, grad, state, lr, lam, betas, eps)
    ref = _torch_steps(torch.optim.AdamW, theta0, grads, lr=lr, betas=betas, eps=eps,
                       weight_decay=lam)
    torch.testing.assert_close(theta, ref, atol=1e-12, rtol=1e-10)
    coupled = _torch_steps(torch.optim.Adam, theta0, grads, lr=lr, betas=betas, eps=eps,
                           weight_decay=lam)
    assert (theta - coupled).abs().max() > 1e-3  # not the same update


def test_zero_gradient_adam_l2_moves_lr_per_step_adamw_moves_lr_lambda_theta():
    theta0 = torch.tensor([2.0, -0.5, 0.1], dtype=torch.float64)
    lr, lam = 1e-2, 0.01
    zero = torch.zeros_like(theta0)
    adam = R.adam_l2_step(theta0, zero, {}, lr, lam)
    adamw = R.adamw_step(theta0, zero, {}, lr, lam)
    # Adam normalizes g' = lam * theta by |g'| + eps: a step of lr * sign(theta), whatever lam is,
    # up to the relative error eps / |lam * theta| <= 1e-8 / 1e-3 = 1e-5
    torch.testing.assert_close(theta0 - adam, lr * theta0.sign(), atol=0.0, rtol=1.1e-5)
    torch.testing.assert_close(theta0 - adamw, lr * lam * theta0, atol=1e-15, rtol=1e-12)


def test_decay_table_groups():
    model = Transformer(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8))
    table = {row["name"]: row["group"] for row in R.decay_table(model)}
    assert table["tok_emb.weight"] == "no_decay" and table["pos_emb.weight"] == "no_decay"
    assert "lm_head.weight" not in table  # tied to tok_emb.weight: listed once
    assert table["blocks.0.attn.qkv.weight"] == "decay"
    assert table["blocks.1.mlp.fc.weight"] == "decay"
    assert table["blocks.0.attn.qkv.bias"] == "no_decay"
    assert table["blocks.0.ln1.weight"] == "no_decay" and table["ln_f.bias"] == "no_decay"
    expected = math.sqrt(sum(float((p.detach().double() ** 2).sum())
                             for n, p in model.named_parameters()
                             if table.get(n) == "decay"))
    assert R.decayed_weight_norm(model) == pytest.approx(expected, rel=1e-12)


def test_matrix_decay_rule_is_nanogpts_and_reaches_the_optimizer():
    """nanoGPT decays every tensor with dim >= 2: embeddings (and the tied output layer) too."""
    torch.manual_seed(0)
    model = R.MatrixDecayTransformer(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2,
                                                 d_model=8))
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.5))
    by_name = {g["name"]: g for g in opt.param_groups}
    decayed = {id(p) for p in by_name["decay"]["params"]}
    assert by_name["decay"]["weight_decay"] == 0.5 and by_name["no_decay"]["weight_decay"] == 0.0
    assert id(model.tok_emb.weight) in decayed and id(model.pos_emb.weight) in decayed
    assert decayed == {id(p) for p in model.parameters() if p.dim() >= 2}
    assert all(p.dim() == 1 for p in by_name["no_decay"]["params"])
    with pytest.raises(ValueError, match="decay_rule"):
        regularized_run(model.config, TrainConfig(), None, dropout=0.0, weight_decay=0.0,
                          label_smoothing=0.0, data_fraction=1.0, decay_rule="all")


# ------------------------------------------------------------------------------------ dropout


def test_inverted_dropout_equals_f_dropout_bit_for_bit():
    x = torch.randn(1000)
    torch.manual_seed(3)
    ref = F.dropout(x, 0.3, training=True)
    ours = R.inverted_dropout(x, 0.3, torch.Generator().manual_seed(3))
    assert torch.equal(ours, ref)


def test_inverted_dropout_preserves_expectation():
    p, n = 0.4, 200_000
    x = torch.full((n,), 2.0, dtype=torch.float64)
    y = R.inverted_dropout(x, p, torch.Generator().manual_seed(0))
    mean_mult, var_mult = R.dropout_moments(p)
    se = math.sqrt(var_mult * 4.0 / n)  # standard error of the mean of y
    assert abs(float(y.mean()) - 2.0 * mean_mult) < 5 * se
    assert float(y.var()) == pytest.approx(4.0 * var_mult, rel=0.02)
    assert torch.equal(R.inverted_dropout(x[:10], 0.0), x[:10])
    with pytest.raises(ValueError, match="drop probability"):
        R.inverted_dropout(x, 1.0)


def test_dropout_sites_of_transformer():
    model = Transformer(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8,
                                    dropout=0.2))
    sites = R.dropout_sites(model)
    kinds = [s["drops"].split(" (")[0] for s in sites]
    assert kinds.count("embeddings") == 1
    assert kinds.count("attention weights") == 2
    assert kinds.count("attention residual branch") == 2
    assert kinds.count("MLP residual branch") == 2
    assert all(s["p"] == 0.2 for s in sites)


# ---------------------------------------------------------------------------- early stopping


def test_early_stop_point():
    steps = [10, 20, 30, 40, 50, 60]
    losses = [3.0, 2.5, 2.6, 2.4, 2.45, 2.5]
    assert R.early_stop_point(steps, losses, patience=2) == (40, 60)
    assert R.early_stop_point(steps, losses, patience=1) == (20, 30)
    assert R.early_stop_point(steps, losses, patience=0) == (40, 60)
    assert R.early_stop_point(steps[:3], [1.0, 1.0, 1.0], patience=2) == (10, 30)  # ties count
    with pytest.raises(ValueError, match="patience"):
        R.early_stop_point(steps, losses, patience=-1)

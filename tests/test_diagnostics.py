"""lmlab.diagnostics: hook statistics against hand-computed values, the update-to-data ratio
against the SGD formula (where it holds) and against Adam's first step (where it does not)."""

import math

import pytest
import torch
from torch import nn

from lmlab import ModelConfig, TrainConfig, Transformer, train
from lmlab import diagnostics as D
from lmlab.data import char_corpus
from lmlab.objectives import clm_loss


def _two_layer():
    a, b = nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0]]))
        b.weight.copy_(torch.tensor([[1.0, 1, 1], [0, 0, 2]]))
    return nn.Sequential(a, b)


def test_probe_records_activation_and_gradient_stats_by_hand():
    model = _two_layer()
    x = torch.tensor([[1.0, 1, 1, 1], [2, 0, -1, 5]])  # (B=2, 4)
    stats = D.probe(model, {"a": model[0], "b": model[1]}, x, loss_fn=lambda out: out.sum())
    h = torch.tensor([[1.0, 2, 3], [2, 0, -3]])  # first layer's output, by hand
    assert stats["a"].act_std == pytest.approx(float(h.std()), rel=1e-6)
    assert stats["a"].act_abs_mean == pytest.approx(11 / 6, rel=1e-6)
    # d(sum of outputs)/dh = column sums of b's weight = [1, 1, 3], for both rows
    g = torch.tensor([[1.0, 1, 3], [1, 1, 3]])
    assert stats["a"].grad_std == pytest.approx(float(g.std()), rel=1e-6)
    assert stats["b"].grad_std == pytest.approx(0.0, abs=1e-12)  # d sum / d out = all ones
    assert torch.equal(stats["a"].act_sample, h.flatten())


def test_probe_removes_hooks_and_restores_grads():
    model = _two_layer()
    model[0].weight.grad = torch.full((3, 4), 5.0)
    D.probe(model, {"a": model[0]}, torch.randn(3, 4))
    assert not model[0]._forward_hooks
    assert torch.equal(model[0].weight.grad, torch.full((3, 4), 5.0))
    assert model[1].weight.grad is None
    with pytest.raises(ValueError, match="at least one"):
        D.ActivationRecorder({})


def test_probe_default_gradient_is_unit_normal_at_the_top():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Identity())
    stats = D.probe(model, {"top": model[1]}, torch.randn(128, 64))
    assert stats["top"].grad_std == pytest.approx(1.0, rel=0.02)  # 8192 N(0,1) draws


def test_probe_of_a_float64_model_keeps_float64_statistics():
    # a stack whose activations pass float32's 3.4e38 (chapter 3's exploding ReLU stack in the gpu
    # profile): the statistics of a float64 probe must stay finite, and exact to float64 rounding
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2, dtype=torch.float64) * 1e20)
        model[1].weight.copy_(torch.eye(2, dtype=torch.float64) * 1e20)
    x = torch.tensor([[1.0, -1.0], [3.0, -3.0]], dtype=torch.float64)  # std of the entries: 2.582
    stats = D.probe(model, {"first": model[0], "second": model[1]}, x)
    expected = float(x.std())  # the same numbers scaled by 1e20 and 1e40
    assert stats["first"].act_std == pytest.approx(expected * 1e20, rel=1e-12)
    assert stats["second"].act_std == pytest.approx(expected * 1e40, rel=1e-12)
    assert math.isfinite(stats["second"].act_abs_mean)
    assert stats["second"].act_sample.abs().max() == 3e40
    assert math.isfinite(stats["first"].grad_std)  # the gradient reaching layer 1 is scaled by 1e20


def test_update_to_data_ratio_by_hand():
    before = torch.tensor([3.0, 4.0])  # norm 5
    after = torch.tensor([3.0, 5.0])  # moved by 1
    assert D.update_to_data_ratio(before, after) == pytest.approx(0.2)
    assert D.update_to_data_ratio(torch.zeros(2), after) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        D.update_to_data_ratio(before, torch.zeros(3))


def _one_step(optimizer_cls, lr, **kw):
    torch.manual_seed(0)
    layer = nn.Linear(32, 16, bias=False)
    tracker = D.UpdateRatioTracker({"w": layer.weight})
    opt = optimizer_cls(layer.parameters(), lr=lr, **kw)
    x = torch.randn(8, 32)
    (layer(x) ** 2).mean().backward()
    g = layer.weight.grad.clone()
    theta = layer.weight.detach().clone()
    opt.step()
    tracker()
    return tracker.rows[-1], g, theta


def test_update_ratio_equals_sgd_formula_for_sgd():
    row, g, theta = _one_step(torch.optim.SGD, lr=0.1)
    assert row["w"] == pytest.approx(0.1 * float(g.norm()) / float(theta.norm()), rel=1e-5)


def test_update_ratio_for_adam_is_not_the_sgd_formula():
    lr = 1e-3
    row, g, theta = _one_step(torch.optim.Adam, lr=lr, eps=1e-12)
    # Adam's first step: m / sqrt(v) = g / |g| -> every entry moves by lr
    adam_first = lr * math.sqrt(g.numel()) / float(theta.norm())
    assert row["w"] == pytest.approx(adam_first, rel=1e-4)
    sgd_formula = lr * float(g.norm()) / float(theta.norm())
    assert row["w"] > 3 * sgd_formula  # the SGD shortcut is far off for Adam


def test_tracker_ratios_equal_update_to_data_ratio_at_every_step():
    torch.manual_seed(0)
    weights = {"a": nn.Parameter(torch.randn(6, 4)), "b": nn.Parameter(torch.randn(3)),
               "zero": nn.Parameter(torch.zeros(2, 2))}
    tracker = D.UpdateRatioTracker(weights)
    expected = []
    for step in range(1, 4):
        before = {n: p.detach().clone() for n, p in weights.items()}
        with torch.no_grad():
            for p in weights.values():
                p.add_(0.1 * step * torch.randn_like(p))
        tracker({"step": 10 * step})
        expected.append({"step": 10 * step, **{n: D.update_to_data_ratio(before[n], p)
                                               for n, p in weights.items()}})
        if step == 2:  # reading the rows midway leaves later steps to come
            assert [r["step"] for r in tracker.rows] == [10, 20]
    assert [r.keys() for r in tracker.rows] == [r.keys() for r in expected]
    for got, want in zip(tracker.rows, expected, strict=True):
        for name in weights:  # float32 norms on both sides, in a different order of operations
            assert got[name] == pytest.approx(want[name], rel=1e-6), (got["step"], name)
    assert tracker.rows[0]["zero"] == math.inf


def test_training_monitor_as_a_train_callback():
    corpus = char_corpus()
    cfg = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2,
                      d_model=16)
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = corpus.val[:4 * 17].view(4, 17)
    monitor = D.TrainingMonitor(model, D.transformer_layers(model), D.named_weights(model),
                                x[:, :-1], x[:, 1:], clm_loss, probe_steps=(0, 3))
    w0 = model.blocks[0].mlp.fc.weight.detach().clone()
    tc = TrainConfig(steps=3, batch_size=4, warmup_steps=0, eval_every=3, eval_batches=1,
                     progress=False)
    train(model, corpus, tc, callback=monitor)
    assert [r["step"] for r in monitor.ratios.rows] == [1, 2, 3]
    assert set(monitor.probes) == {0, 3}
    assert list(monitor.probes[0]) == ["h0", "h1", "h2"]
    assert monitor.probes[3]["h2"].grad_std > 0
    # the tracker's first ratio is measured from the weights at construction
    steps, ratios = monitor.ratios.series("blocks.0.mlp.fc.weight")
    assert steps == [1, 2, 3] and all(r > 0 for r in ratios)
    assert not torch.equal(w0, model.blocks[0].mlp.fc.weight)
    assert "lm_head.weight" not in D.named_weights(model)  # tied to tok_emb: listed once


def test_initial_loss_expansion_matches_cross_entropy_of_small_logits():
    """Gaussian logits of spread s over V classes, targets with a few logits raised: the mean
    cross-entropy equals ln V + s^2/2 + (m - z_y) within the returned third-order bound, and the
    terms are what they say (raising the targets' logits by 0.3 moves the target term by -0.3).
    The same loss in bits (a units bug) lies far outside the bound."""
    g = torch.Generator().manual_seed(0)
    V = 65
    for s in (0.05, 0.2, 0.4):
        logits = s * torch.randn(32, 64, V, generator=g)  # (B, T, V)
        targets = torch.randint(0, V, (32, 64), generator=g)  # (B, T)
        raised = logits.scatter_add(-1, targets[..., None], torch.full((32, 64, 1), 0.3))
        for z, shift in ((logits, 0.0), (raised, 0.3)):
            loss = float(torch.nn.functional.cross_entropy(z.flatten(0, 1), targets.flatten()))
            terms = D.initial_loss_expansion(z, targets)
            assert terms["ln_v"] == math.log(V)
            assert abs(loss - terms["predicted"]) <= terms["remainder_bound"]
            assert abs(loss / math.log(2) - terms["predicted"]) > 10 * terms["remainder_bound"]
            # m - z_y: about -shift (the raise also lifts m by shift / V); s^2/2 within 20%
            assert abs(terms["target"] + shift * (1 - 1 / V)) < 4 * s / math.sqrt(32 * 64)
            assert abs(terms["spread"] - s * s / 2) < 0.2 * s * s / 2 + shift ** 2 / V
    with pytest.raises(ValueError, match="expected"):
        D.initial_loss_expansion(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):  # an ignored position (-100)
        D.initial_loss_expansion(torch.zeros(3, 5), torch.tensor([0, -100, 4]))

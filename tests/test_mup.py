"""lmlab.mup: muP at the base width is the standard model; away from it, the init, the
multipliers and the per-group learning rates follow Yang et al. (2022); the coordinate check
tells the two parametrizations apart."""

import math

import pytest
import torch
from torch import nn

from lmlab import ModelConfig, TrainConfig, Transformer
from lmlab import mup as M
from lmlab.optim import build_optimizer

V = 13


def _cfg(width, **kw):
    return ModelConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, d_model=width,
                       tie_weights=False, **kw)


def test_at_base_width_mup_is_the_standard_model():
    torch.manual_seed(0)
    sp = Transformer(_cfg(32))
    torch.manual_seed(0)
    mu = M.MuTransformer(_cfg(32), base_d_model=32)
    for (name, p), q in zip(sp.state_dict().items(), mu.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    x = torch.randint(0, V, (3, 8))
    torch.testing.assert_close(mu(x), sp(x), rtol=0, atol=1e-6)


def test_width_scaling_of_init_multipliers_and_attention():
    torch.manual_seed(0)
    mu = M.MuTransformer(_cfg(128), base_d_model=32)  # m = 4, head dims 64 vs 16
    torch.manual_seed(0)
    sp = Transformer(_cfg(128))
    assert mu.width_mult == 4
    fc_mu, fc_sp = mu.blocks[0].mlp.fc.weight, sp.blocks[0].mlp.fc.weight
    assert torch.allclose(fc_mu, fc_sp / 2)  # std / sqrt(m)
    assert torch.equal(mu.tok_emb.weight, sp.tok_emb.weight)  # input layer unchanged
    assert torch.equal(mu.lm_head.weight, sp.lm_head.weight)
    h = torch.randn(2, 5, 128)
    torch.testing.assert_close(mu.lm_head(h), sp.lm_head(h) / 4)  # output multiplier 1/m
    qkv = mu.blocks[0].attn.qkv
    out = nn.functional.linear(h, qkv.weight, qkv.bias)  # (B, T, 3C)
    q_mult = math.sqrt(16 / 64)  # sqrt(d_k0 / d_k): q.k / sqrt(d_k) becomes q.k * 4 / d_k
    torch.testing.assert_close(qkv(h)[..., :128], out[..., :128] * q_mult)
    torch.testing.assert_close(qkv(h)[..., 128:], out[..., 128:])
    mu.reset_parameters()  # re-initializing keeps the muP scaling
    assert float(mu.blocks[0].mlp.fc.weight.detach().std()) == pytest.approx(0.01, rel=0.1)


def test_optimizer_groups_carry_lr_scales_and_cover_every_parameter_once():
    mu = M.MuTransformer(_cfg(64), base_d_model=16)
    groups = mu.optimizer_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in mu.parameters())
    scales = {g["name"]: g["lr_scale"] for g in groups}
    assert scales == {"decay": 0.25, "readout": 1.0, "no_decay": 1.0}
    opt = build_optimizer(mu, TrainConfig(lr=1e-3, weight_decay=0.1))
    assert [g.get("lr_scale") for g in opt.param_groups] == [0.25, 1.0, 1.0]
    sp_opt = build_optimizer(Transformer(_cfg(64)), TrainConfig(lr=1e-3))
    assert all("lr_scale" not in g for g in sp_opt.param_groups)  # default path unchanged


def test_bad_configurations_fail_clearly():
    with pytest.raises(ValueError, match="tie_weights=False"):
        M.MuTransformer(_cfg(32).replace(tie_weights=True), 32)
    with pytest.raises(ValueError, match="base_d_model"):
        M.MuTransformer(_cfg(32), 15)


def test_best_lr_refines_between_grid_points():
    lrs = [1e-3, 1e-2, 1e-1]
    losses = [(math.log10(lr) + 1.7) ** 2 for lr in lrs]  # a parabola in log lr, min at 10^-1.7
    assert M.best_lr(lrs, losses) == pytest.approx(10**-1.7, rel=1e-9)
    assert M.best_lr(lrs, [1.0, 2.0, 3.0]) == 1e-3  # edge of the grid
    assert M.best_lr(lrs, [3.0, 2.0, float("nan")]) == 1e-2  # a diverged neighbour
    with pytest.raises(ValueError):
        M.best_lr([1e-2, 1e-3], [1.0, 2.0])


def test_best_lr_fits_a_fixed_range_of_log_lr_not_three_points():
    # a parabola in log2 lr with its minimum at 2^-6, sampled on an octave grid: every window
    # size recovers it exactly
    lrs = [2.0**k for k in range(-10, -3)]  # 2^-10 .. 2^-4
    exact = [(math.log2(lr) + 6.0) ** 2 / 10 for lr in lrs]
    assert M.best_lr(lrs, exact) == pytest.approx(2.0**-6, rel=1e-9)
    # a flat basin with one low point off centre (a muP sweep at width 128, seed 1: losses 2.500,
    # 2.496, 2.495 over 8e-3 .. 3.2e-2): three points put the optimum near the low point, 2.27e-2;
    # the two-octave fit moves it towards the centre of the basin, 1.51e-2 (values from this fit)
    lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2]
    basin = [2.939, 2.664, 2.534, 2.500, 2.496, 2.495, 2.808]
    assert M.best_lr(lrs, basin, span_octaves=1.0) == pytest.approx(2.27e-2, rel=0.01)
    assert M.best_lr(lrs, basin) == pytest.approx(1.51e-2, rel=0.01)
    # on a grid coarser than two octaves the window is the three points around the minimum
    coarse = [1e-3, 1e-2, 1e-1, 1.0]
    losses = [(math.log10(lr) + 1.7) ** 2 for lr in coarse[:3]] + [9.0]
    assert M.best_lr(coarse, losses) == pytest.approx(10**-1.7, rel=1e-9)
    with pytest.raises(ValueError, match="span_octaves"):
        M.best_lr(lrs, basin, span_octaves=0)


def test_coordinate_check_is_flat_under_mup_and_grows_under_sp():
    torch.manual_seed(0)
    x = torch.randint(0, V, (4, 8))
    y = torch.randint(0, V, (4, 8))
    widths = [16, 64]

    def growth(make):
        rows = M.coordinate_check(make, widths, x, y, steps=3, lr=3e-2)
        l1 = {r["width"]: r["l1"] for r in rows if r["layer"] == "block2" and r["step"] == 3}
        return l1[64] / l1[16]

    sp = growth(lambda w: Transformer(_cfg(w)))
    mu = growth(lambda w: M.MuTransformer(_cfg(w), base_d_model=16))
    assert sp > 2.5  # Adam moves every coordinate by ~lr: SP grows with width
    assert mu < 1.6 and mu < sp / 2

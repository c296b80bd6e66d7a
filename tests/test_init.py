"""lmlab.init: each scheme against torch.nn.init (same draws, same bounds and stds), sample
statistics against the formulas, GPT-2's scheme against Transformer.reset_parameters."""

import math

import pytest
import torch
from torch import nn

from lmlab import ModelConfig, Transformer
from lmlab import init as I

SHAPE = (384, 256)  # (fan_out, fan_in): 98,304 entries, so a sample std is within ~0.2% (1 sd)
FAN_IN, FAN_OUT = SHAPE[1], SHAPE[0]


def _draw(fn, seed=0, shape=SHAPE):
    w = torch.empty(shape)
    torch.manual_seed(seed)
    fn(w)
    return w


@pytest.mark.parametrize("ours, theirs, rtol", [
    # Same RNG calls as torch; the bounds are written as different float expressions
    # (sqrt(6/n) vs sqrt(3) * sqrt(2/n)), so allow 1e-6 relative for the uniform ones.
    (lambda w: I.init_weight_(w, "glorot_uniform"), nn.init.xavier_uniform_, 1e-6),
    (lambda w: I.init_weight_(w, "glorot_normal"), nn.init.xavier_normal_, 1e-6),
    (lambda w: I.init_weight_(w, "he_normal"),
     lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), 1e-6),
    (lambda w: I.init_weight_(w, "he_uniform"),
     lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"), 1e-6),
    (lambda w: I.init_weight_(w, "he_normal", nonlinearity="tanh"),
     lambda w: nn.init.kaiming_normal_(w, nonlinearity="tanh"), 1e-6),
    (lambda w: I.init_weight_(w, "normal", std=0.02), lambda w: nn.init.normal_(w, 0.0, 0.02), 0),
    (lambda w: I.init_weight_(w, "zeros"), nn.init.zeros_, 0),
    (lambda w: I.init_weight_(w, "constant", value=0.3), lambda w: nn.init.constant_(w, 0.3), 0),
])
def test_same_draws_as_torch_nn_init(ours, theirs, rtol):
    a, b = _draw(ours), _draw(theirs)
    torch.testing.assert_close(a, b, rtol=rtol, atol=0.0)


@pytest.mark.parametrize("scheme, std", [
    ("glorot_uniform", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("glorot_normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("he_normal", math.sqrt(2 / FAN_IN)),
    ("he_uniform", math.sqrt(2 / FAN_IN)),
    ("gpt2", 0.02),
    ("glorot_uniform_fan_in", math.sqrt(2 / FAN_IN)),  # the article's bound: a^2/3 = 2/fan_in
])
def test_sample_std_matches_formula(scheme, std):
    w = _draw(lambda t: I.init_weight_(t, scheme))
    assert abs(float(w.std()) / std - 1) < 0.02  # 2%: ~10 sd of the sample std
    assert abs(float(w.mean())) < 0.02 * std * 5
    assert I.scheme_std(scheme, FAN_IN, FAN_OUT) == pytest.approx(std, rel=1e-12)


def test_uniform_bounds_are_the_formulas():
    a = math.sqrt(6 / (FAN_IN + FAN_OUT))
    assert I.glorot_uniform_bound(FAN_IN, FAN_OUT) == pytest.approx(a, rel=1e-12)
    w = _draw(lambda t: I.init_weight_(t, "glorot_uniform"))
    assert float(w.abs().max()) <= a and float(w.abs().max()) > 0.999 * a
    b = math.sqrt(6 / FAN_IN)  # He uniform for ReLU
    assert I.he_uniform_bound(FAN_IN) == pytest.approx(b, rel=1e-12)
    w = _draw(lambda t: I.init_weight_(t, "he_uniform"))
    assert float(w.abs().max()) <= b and float(w.abs().max()) > 0.999 * b


def test_wrong_variants_are_what_the_article_says():
    w = _draw(lambda t: I.init_weight_(t, "glorot_uniform_fan_in"))
    assert float(w.abs().max()) <= math.sqrt(6 / FAN_IN)
    # its variance is (fan_in + fan_out) / fan_in times Glorot's
    ratio = float(w.var()) / (2 / (FAN_IN + FAN_OUT))
    assert ratio == pytest.approx((FAN_IN + FAN_OUT) / FAN_IN, rel=0.03)
    w = _draw(lambda t: I.init_weight_(t, "he_constant"))
    assert torch.all(w == w[0, 0]) and float(w[0, 0]) == pytest.approx(math.sqrt(2 / FAN_IN))


@pytest.mark.parametrize("name", ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"])
def test_gain_matches_torch(name):
    assert I.gain(name) == pytest.approx(nn.init.calculate_gain(name), rel=1e-12)


def test_fans_match_torch_and_reject_vectors():
    for shape in [(3, 5), (4, 2, 3, 3)]:
        w = torch.empty(shape)
        assert I.fans(w) == nn.init._calculate_fan_in_and_fan_out(w)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        I.fans(torch.empty(7))
    with pytest.raises(ValueError, match="scheme='xavier'"):
        I.init_weight_(torch.empty(2, 2), "xavier")
    with pytest.raises(ValueError, match="nonlinearity='swish'"):
        I.gain("swish")


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_scheme_reproduces_reset_parameters_exactly(tie):
    cfg = ModelConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, d_model=16, tie_weights=tie)
    a, b = Transformer(cfg), Transformer(cfg)
    torch.manual_seed(7)
    a.reset_parameters()
    torch.manual_seed(7)
    I.apply_init(b, "gpt2")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    proj = a.blocks[0].mlp.proj.weight
    assert float(proj.detach().std()) == pytest.approx(0.02 / math.sqrt(6), rel=0.1)


def test_apply_init_scales_residual_projections_and_resets_the_rest():
    cfg = ModelConfig(vocab_size=11, block_size=8, n_layer=8, n_head=2, d_model=64)
    torch.manual_seed(0)
    m = I.apply_init(Transformer(cfg), "glorot_normal", scale_residual=True)
    # (256, 64) and (64, 256)
    fc, proj = m.blocks[0].mlp.fc.weight.detach(), m.blocks[0].mlp.proj.weight.detach()
    expected = math.sqrt(2 / (64 + 256))
    assert float(fc.std()) == pytest.approx(expected, rel=0.05)
    assert float(proj.std()) == pytest.approx(expected / math.sqrt(16), rel=0.05)
    assert torch.all(m.blocks[0].mlp.fc.bias == 0) and torch.all(m.blocks[0].ln1.weight == 1)
    with pytest.raises(ValueError, match="scale_residual"):
        I.apply_init(nn.Sequential(nn.Linear(3, 3)), "gpt2")


def test_mean_field_prediction_matches_closed_forms_and_a_wide_stack():
    # ReLU: m_l = (s/2)^l, mu_l = sqrt(q_l / (2 pi)) -> std_l = sqrt(m_l (1 - 1/pi)); quadrature
    # of the kink at 0 is accurate to ~0.2% with 201 nodes, so 1% tolerance.
    for s in (1.0, 2.0):
        pred = I.mean_field_std("relu", s, 4)
        exact = [math.sqrt((s / 2) ** l * (1 - 1 / math.pi)) for l in range(1, 5)]
        assert pred == pytest.approx(exact, rel=0.01)
    assert I.mean_field_std("linear", 1.0, 3) == pytest.approx([1.0] * 3, rel=1e-9)
    # tanh at Glorot (s = 1): a wide stack follows the prediction within 10% at every layer
    torch.manual_seed(0)
    stack = I.apply_init(I.DeepStack(512, 12, "tanh"), "glorot_normal")
    x = torch.randn(256, 512)  # (B, width), E[x^2] = 1
    measured = []
    h = x
    with torch.no_grad():
        for lin, act in zip(stack.linears, stack.acts, strict=True):
            h = act(lin(h))
            measured.append(float(h.std()))
    assert measured == pytest.approx(I.mean_field_std("tanh", 1.0, 12), rel=0.1)
    with pytest.raises(ValueError):
        I.mean_field_std("tanh", 1.0, 0)


def test_mlp_char_model_and_builder():
    cfg = ModelConfig(vocab_size=11, block_size=8, n_layer=5, n_head=1, d_model=32)
    torch.manual_seed(0)
    model = I.mlp_builder("he_normal", "relu")(cfg)
    assert model(torch.randint(0, 11, (2, 8))).shape == (2, 8, 11)  # (B, T, V)
    assert len(model.stack.linears) == 5
    assert float(model.tok_emb.weight.detach().std()) == pytest.approx(1.0, rel=0.15)
    w = model.stack.linears[0].weight.detach()
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 32), rel=0.1)
    assert I.mlp_builder("he_normal", "relu").name != I.mlp_builder("he_normal", "tanh").name
    assert I.mlp_builder("he_normal", "relu").name != I.initialized("he_normal").name
    with pytest.raises(ValueError, match="nonlinearity"):
        I.mlp_builder("he_normal", "swish")

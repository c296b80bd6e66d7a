"""Named initialization schemes, with their formulas, applied to tensors and to whole models.

For a weight W of shape (fan_out, fan_in, *kernel) (an ``nn.Linear`` weight is (fan_out, fan_in);
an ``nn.Embedding`` table (V, C) counts as fan_in = C, fan_out = V, PyTorch's convention):

    zeros            W = 0
    constant(c)      W = c
    normal(std)      W ~ N(0, std^2)
    gpt2             normal(0.02); residual projections normal(0.02 / sqrt(2 L))  (Radford 2019)
    glorot_uniform   W ~ U(-a, a),  a = gain * sqrt(6 / (fan_in + fan_out))   (Glorot & Bengio 2010)
    glorot_normal    W ~ N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))
    he_normal        W ~ N(0, s^2), s = gain / sqrt(fan_in), gain = sqrt(2) for ReLU  (He 2015)
    he_uniform       W ~ U(-a, a),  a = gain * sqrt(3 / fan_in)

Both Glorot forms have Var(W) = gain^2 * 2 / (fan_in + fan_out) (a uniform on (-a, a) has variance
a^2 / 3), both He forms Var(W) = gain^2 / fan_in. Two wrong versions circulate in a widely copied
article; they are here so that the chapter can show what they do:

    glorot_uniform_fan_in   W ~ U(-a, a), a = sqrt(6 / fan_in)  (Var 2 / fan_in, not 2 / (in + out))
    he_constant             W = sqrt(2 / fan_in) in every entry (a value, where He gives a std)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .model import Builder, Transformer

SCHEMES = ("zeros", "constant", "normal", "gpt2", "glorot_uniform", "glorot_normal", "he_normal",
           "he_uniform", "glorot_uniform_fan_in", "he_constant")
WRONG_SCHEMES = ("glorot_uniform_fan_in", "he_constant")
NONLINEARITIES = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu", "gelu")

GPT2_STD = 0.02


def gain(nonlinearity: str, negative_slope: float = 0.01) -> float:
    """The factor that restores unit variance after ``nonlinearity`` (torch.nn.init.calculate_gain):
    linear, sigmoid: 1; tanh: 5/3; relu: sqrt(2); leaky_relu: sqrt(2 / (1 + slope^2)); selu: 3/4;
    gelu: sqrt(2) (GELU is treated like ReLU, which it approaches for large |x|)."""
    table = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
             "leaky_relu": math.sqrt(2.0 / (1 + negative_slope**2)), "selu": 3.0 / 4,
             "gelu": math.sqrt(2.0)}
    if nonlinearity not in table:
        raise ValueError(f"nonlinearity={nonlinearity!r} is unknown: expected one of "
                         f"{', '.join(NONLINEARITIES)}.")
    return table[nonlinearity]


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) = (size(1) * r, size(0) * r), r = prod(size[2:]) (1 for a matrix)."""
    if weight.dim() < 2:
        raise ValueError(f"fan_in and fan_out need a weight with at least 2 dimensions, got shape "
                         f"{tuple(weight.shape)}; biases and LayerNorm gains are set to 0 and 1.")
    receptive = math.prod(weight.shape[2:])
    return weight.size(1) * receptive, weight.size(0) * receptive


def glorot_uniform_bound(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """a = gain * sqrt(6 / (fan_in + fan_out))."""
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


def glorot_normal_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """s = gain * sqrt(2 / (fan_in + fan_out))."""
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def he_normal_std(fan_in: int, gain: float = math.sqrt(2.0)) -> float:
    """s = gain / sqrt(fan_in) (= sqrt(2 / fan_in) for ReLU)."""
    return gain / math.sqrt(fan_in)


def he_uniform_bound(fan_in: int, gain: float = math.sqrt(2.0)) -> float:
    """a = gain * sqrt(3 / fan_in) (= sqrt(6 / fan_in) for ReLU)."""
    return gain * math.sqrt(3.0 / fan_in)


def wrong_glorot_uniform_bound(fan_in: int) -> float:
    """The article's bound a = sqrt(6 / fan_in) (fan_out forgotten)."""
    return math.sqrt(6.0 / fan_in)


def wrong_he_value(fan_in: int) -> float:
    """The article's He 'weight value' sqrt(2 / fan_in), used as every entry of W."""
    return math.sqrt(2.0 / fan_in)


def scheme_std(scheme: str, fan_in: int, fan_out: int, *, std: float = GPT2_STD,
               nonlinearity: str = "relu") -> float:
    """The standard deviation of one entry of W under ``scheme`` (0 for the constant schemes)."""
    _check_scheme(scheme)
    if scheme in ("zeros", "constant", "he_constant"):
        return 0.0
    if scheme in ("normal", "gpt2"):
        return std
    g = gain(nonlinearity)
    if scheme == "glorot_uniform":
        return glorot_uniform_bound(fan_in, fan_out) / math.sqrt(3.0)
    if scheme == "glorot_normal":
        return glorot_normal_std(fan_in, fan_out)
    if scheme == "he_normal":
        return he_normal_std(fan_in, g)
    if scheme == "he_uniform":
        return he_uniform_bound(fan_in, g) / math.sqrt(3.0)
    return wrong_glorot_uniform_bound(fan_in) / math.sqrt(3.0)  # glorot_uniform_fan_in


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is unknown: expected one of {', '.join(SCHEMES)}.")


@torch.no_grad()
def init_weight_(weight: torch.Tensor, scheme: str, *, std: float = GPT2_STD,
                 nonlinearity: str = "relu", value: float = 0.0, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` in place by ``scheme`` (formulas in the module docstring); returns it.

    ``std``: for normal / gpt2. ``nonlinearity``: picks the He gain (Glorot uses gain 1, as in the
    paper and in ``torch.nn.init.xavier_*`` by default). ``value``: for constant. ``scale``
    multiplies the std, bound or value (the 1/sqrt(2L) of residual projections). Draws use the same
    calls as ``torch.nn.init``, so the same seed gives the same tensor.
    """
    _check_scheme(scheme)
    if scheme == "zeros":
        return weight.zero_()
    if scheme == "constant":
        return weight.fill_(value * scale)
    if scheme in ("normal", "gpt2"):
        return weight.normal_(mean=0.0, std=std * scale, generator=generator)
    fan_in, fan_out = fans(weight)
    g = gain(nonlinearity)
    if scheme == "he_constant":
        return weight.fill_(wrong_he_value(fan_in) * scale)
    if scheme == "glorot_normal":
        return weight.normal_(0.0, glorot_normal_std(fan_in, fan_out) * scale, generator=generator)
    if scheme == "he_normal":
        return weight.normal_(0.0, he_normal_std(fan_in, g) * scale, generator=generator)
    if scheme == "glorot_uniform":
        a = glorot_uniform_bound(fan_in, fan_out) * scale
    elif scheme == "he_uniform":
        a = he_uniform_bound(fan_in, g) * scale
    else:  # glorot_uniform_fan_in
        a = wrong_glorot_uniform_bound(fan_in) * scale
    return weight.uniform_(-a, a, generator=generator)


def residual_projections(model: nn.Module) -> list[nn.Linear]:
    """The layers that write into a Transformer's residual stream: attn.proj and mlp.proj of
    every block (empty for models without ``blocks``)."""
    out = []
    for block in getattr(model, "blocks", []):
        for path in ("attn.proj", "mlp.proj"):
            module = block.get_submodule(path)
            if isinstance(module, nn.Linear):
                out.append(module)
    return out


@torch.no_grad()
def apply_init(model: nn.Module, scheme: str = "gpt2", *, std: float = GPT2_STD,
               nonlinearity: str = "relu", value: float = 0.0,
               scale_residual: bool | None = None) -> nn.Module:
    """Initialize every weight matrix of ``model`` (nn.Linear weights and nn.Embedding tables)
    by ``scheme``, biases to 0, LayerNorm gains to 1 and shifts to 0; returns the model.

    Modules are visited in ``model.modules()`` order, so ``apply_init(model, "gpt2")`` draws
    exactly what :meth:`lmlab.Transformer.reset_parameters` draws for the same seed.
    ``scale_residual`` (default: True for gpt2, False otherwise): redraw the residual projections
    (:func:`residual_projections`) with their std / bound / value multiplied by 1 / sqrt(2 L),
    L = number of blocks: the residual stream sums 2L branches, so each gets 1/(2L) of the variance.
    """
    _check_scheme(scheme)
    kw = {"std": std, "nonlinearity": nonlinearity, "value": value}
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init_weight_(module.weight, scheme, **kw)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()
    if scale_residual is None:
        scale_residual = scheme == "gpt2"
    if scale_residual:
        projections = residual_projections(model)
        if not projections:
            raise ValueError("scale_residual=True needs a model with Transformer blocks "
                             "(model.blocks[i].attn.proj / .mlp.proj); pass scale_residual=False.")
        n_layer = len(model.blocks)
        for proj in projections:
            if scheme in ("normal", "gpt2"):  # the same float expression as reset_parameters
                init_weight_(proj.weight, scheme, std=std / math.sqrt(2 * n_layer))
            else:
                init_weight_(proj.weight, scheme, **kw, scale=1.0 / math.sqrt(2 * n_layer))
    return model


def initialized(scheme: str, **kwargs) -> Builder:
    """A :class:`lmlab.model.Builder` for :func:`lmlab.experiments.run_experiment`:
    ``config -> Transformer`` with ``apply_init(model, scheme, **kwargs)``, named
    ``init:<scheme>,<kwargs>`` in the cache."""
    _check_scheme(scheme)

    def build(config):
        return apply_init(Transformer(config), scheme, **kwargs)

    return Builder(_scheme_name(scheme, **kwargs), build)


def _scheme_name(scheme: str, **kwargs) -> str:
    return "init:" + scheme + "".join(f",{k}={v}" for k, v in sorted(kwargs.items()))


@torch.no_grad()
def mean_field_std(nonlinearity: str, weight_var_fan_in: float, depth: int,
                   input_second_moment: float = 1.0, points: int = 201) -> list[float]:
    """The infinite-width prediction of the activation std at each layer of a :class:`DeepStack`
    whose weights have Var(W) = weight_var_fan_in / fan_in (so weight_var_fan_in = 1 for Glorot
    on square layers, 2 for He), fed inputs with E[x^2] = input_second_moment:

        q_l = weight_var_fan_in * m_{l-1}          pre-activation variance (m_0 = E[x^2])
        m_l = E[f(z)^2],  mu_l = E[f(z)],  z ~ N(0, q_l)
        std_l = sqrt(m_l - mu_l^2)                 for l = 1 .. depth

    The expectations use Gauss-Hermite quadrature with ``points`` nodes. For ReLU this gives
    m_l = (weight_var_fan_in / 2)^l m_0 exactly; for tanh at weight_var_fan_in = 1 the variance
    decays slowly, q_l ~ 1 / (2 l), because tanh(z) ~ z - z^3 / 3 takes a little off each layer.
    """
    if depth < 1 or weight_var_fan_in <= 0 or input_second_moment <= 0:
        raise ValueError(f"need depth >= 1 and positive variances; got depth={depth}, "
                         f"weight_var_fan_in={weight_var_fan_in}, "
                         f"input_second_moment={input_second_moment}.")
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)  # weight exp(-z^2 / 2)
    z = torch.tensor(nodes, dtype=torch.float64)  # (points,)
    w = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64)  # sums to 1
    f = activation(nonlinearity).double()
    m, stds = input_second_moment, []
    for _ in range(depth):
        q = weight_var_fan_in * m
        a = f(math.sqrt(q) * z)  # (points,) f at the quadrature nodes of N(0, q)
        m, mu = float((w * a * a).sum()), float((w * a).sum())
        stds.append(math.sqrt(max(0.0, m - mu * mu)))
    return stds


# ------------------------------------------------------------------- a deep stack to study
_ACTIVATIONS = {"linear": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
                "gelu": nn.GELU, "selu": nn.SELU, "leaky_relu": nn.LeakyReLU}


def activation(nonlinearity: str) -> nn.Module:
    if nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity={nonlinearity!r} is unknown: expected one of "
                         f"{', '.join(_ACTIVATIONS)}.")
    return _ACTIVATIONS[nonlinearity]()


class DeepStack(nn.Module):
    """x -> f(W_depth ... f(W_2 f(W_1 x))): ``depth`` square bias-free linear layers of ``width``,
    each followed by the nonlinearity f. Layer l's output is ``self.acts[l - 1]``'s output.

    Without normalization, nothing but the initialization decides whether the signal survives."""

    def __init__(self, width: int, depth: int, nonlinearity: str = "tanh"):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width={width} and depth={depth} must both be >= 1.")
        self.nonlinearity = nonlinearity
        self.linears = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self.acts = nn.ModuleList(activation(nonlinearity) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., width) -> (..., width)
        for linear, act in zip(self.linears, self.acts, strict=True):
            x = act(linear(x))
        return x


class MLPCharModel(nn.Module):
    """A character model with no attention and no normalization: each position predicts the next
    character from its own character only (a bigram model), through a deep stack.

        logits = W_out DeepStack(E[x])        (B, T) -> (B, T, V)

    It carries a :class:`lmlab.ModelConfig` (``n_layer`` = depth, ``d_model`` = width) so that
    :func:`lmlab.train` and :func:`lmlab.experiments.run_experiment` can train it."""

    def __init__(self, config, nonlinearity: str = "tanh"):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.stack = DeepStack(config.d_model, config.n_layer, nonlinearity)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.stack(self.tok_emb(idx)))  # (B, T, C) -> (B, T, V)


def mlp_builder(scheme: str, nonlinearity: str = "tanh", **kwargs) -> Builder:
    """The :class:`lmlab.model.Builder` ``config -> MLPCharModel`` with the stack of
    ``nonlinearity``, initialized by ``apply_init(model, scheme, **kwargs)``, then the embedding
    table redrawn at N(0, 1) so that the stack's input has unit variance whatever the scheme;
    named ``mlp-<nonlinearity>-init:<scheme>,<kwargs>`` in the cache."""
    _check_scheme(scheme)
    activation(nonlinearity)  # fail now on a bad name, not inside a training run

    def build(config):
        model = MLPCharModel(config, nonlinearity)
        apply_init(model, scheme, **kwargs)
        with torch.no_grad():
            model.tok_emb.weight.normal_(0.0, 1.0)
        return model

    return Builder("mlp-" + nonlinearity + "-" + _scheme_name(scheme, **kwargs), build)

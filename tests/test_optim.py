"""Optimizers written from scratch against torch.optim, schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim._muon import _zeropower_via_newtonschulz

from lmlab import ModelConfig, TrainConfig, Transformer
from lmlab import optimizers as scratch
from lmlab.optim import build_optimizer, lr_at, param_groups
from lmlab.surfaces import ill_conditioned_quadratic, rosenbrock, trajectory

STEPS = 100
VOCAB = 23
# Float32 parameters after 100 steps; both sides do the same operations in the same order, so the
# only differences are rounding (fused vs. unfused kernels), far below these bounds.
ATOL, RTOL = 1e-6, 1e-5


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=2,
                                   d_model=16))


def assert_parity(make_ours, make_reference, steps: int = STEPS) -> None:
    """Train two copies of one tiny Transformer on the same batches; compare every parameter
    after every step."""
    ours, ref = tiny_model(), tiny_model()
    opt_ours = make_ours(param_groups(ours, 0.1))
    opt_ref = make_reference(param_groups(ref, 0.1))
    gen = torch.Generator().manual_seed(1)
    moved = 0.0
    for step in range(steps):
        x = torch.randint(0, VOCAB, (4, 8), generator=gen)  # (B, T)
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
                if not torch.allclose(p, q, atol=ATOL, rtol=RTOL):
                    worst = float((p - q).abs().max())
                    raise AssertionError(f"{name} differs by {worst:.3g} at step {step + 1}")
    with torch.no_grad():
        for p, q in zip(ours.parameters(), tiny_model().parameters(), strict=True):
            moved = max(moved, float((p - q).abs().max()))
    assert moved > 1e-3, "the parameters barely moved: the comparison would prove nothing"


def test_sgd_matches_torch():
    assert_parity(lambda g: scratch.SGD(g, lr=0.3),
                  lambda g: torch.optim.SGD(g, lr=0.3, foreach=False))


def test_momentum_matches_torch_with_l2():
    assert_parity(lambda g: scratch.SGD(g, lr=0.05, momentum=0.9),
                  lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, foreach=False))


def test_nesterov_matches_torch():
    assert_parity(lambda g: scratch.SGD(g, lr=0.05, momentum=0.9, nesterov=True),
                  lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, nesterov=True, foreach=False))


def test_adam_matches_torch_with_coupled_decay():
    assert_parity(lambda g: scratch.Adam(g, lr=3e-3, betas=(0.9, 0.99)),
                  lambda g: torch.optim.Adam(g, lr=3e-3, betas=(0.9, 0.99), foreach=False))


def test_adamw_matches_torch():
    assert_parity(lambda g: scratch.AdamW(g, lr=3e-3, betas=(0.9, 0.95), eps=1e-6),
                  lambda g: torch.optim.AdamW(g, lr=3e-3, betas=(0.9, 0.95), eps=1e-6,
                                              foreach=False))


class _TorchMuonWithAdamW:
    """torch.optim.Muon on the matrices, torch.optim.AdamW on the rest: the reference for ours."""

    def __init__(self, groups, lr, momentum, betas):
        matrices = [g for g in groups if g["name"] == "decay"]
        rest = [g for g in groups if g["name"] != "decay"]
        self.opts = [torch.optim.Muon(matrices, lr=lr, momentum=momentum,
                                      adjust_lr_fn="match_rms_adamw"),
                     torch.optim.AdamW(rest, lr=lr, betas=betas, foreach=False)]

    def step(self):
        for opt in self.opts:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.opts:
            opt.zero_grad(set_to_none=set_to_none)


def test_muon_matches_torch_muon_plus_adamw(monkeypatch):
    # torch.optim.Muon always orthogonalizes in bf16, ours in the device's dtype: give both the same
    # fp32 Newton-Schulz (ours), so that this checks the rest of the step (momentum, Nesterov, the
    # lr adjustment, decoupled decay) exactly; the Newton-Schulz tests below compare the two
    # orthogonalizers themselves, each within the tolerance of its dtype.
    def fp32_newton_schulz(grad, coefficients, steps, eps):
        return scratch.newton_schulz(grad, steps, eps, coefficients, dtype=torch.float32)

    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", fp32_newton_schulz)

    def ours(groups):
        for g in groups:
            g["use_muon"] = g["name"] == "decay"
        return scratch.Muon(groups, lr=2e-3, momentum=0.95, betas=(0.9, 0.99),
                            ns_dtype=torch.float32)

    assert_parity(ours, lambda g: _TorchMuonWithAdamW(g, 2e-3, 0.95, (0.9, 0.99)))


def quintic_by_svd(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz in exact arithmetic (float64): on G = U S V^T it is U p^steps(S/||G||_F) V^T,
    with p(s) = a s + b s^3 + c s^5 applied to each singular value."""
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    s = s / g.double().norm()
    for _ in range(steps):
        s = scratch.NS_A * s + scratch.NS_B * s**3 + scratch.NS_C * s**5
    return u @ torch.diag(s) @ vh


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference.double()).norm() / reference.double().norm())


def rounding_bound(dtype: torch.dtype, roundings: int, products: int = 0, k: int = 512) -> float:
    """Relative Frobenius error of a computation that rounds ``roundings`` stored results to
    ``dtype`` and accumulates ``products`` matrix products with dot products of length ``k`` in
    it: each stored rounding is at most u (u = 2^-24 in fp32, 2^-8 in bf16), each dot product
    about sqrt(k) u (Higham's probabilistic bound); independent errors add in quadrature, and the
    bound takes 3 times that (3 sigma)."""
    u = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}[dtype]
    return 3 * u * math.sqrt(roundings + products * k)


# Roundings of one 5-step Newton-Schulz: ours stores 7 results per step (A, a I, b A, A A,
# c A A, P, P X) plus 2 for the normalization: 37; torch's fused addmm form stores 3 per step plus
# 1: 16. Products of bf16 matrices accumulate in fp32 (CPU and GPU alike), so in bf16 only the
# stored results count; in fp32 the 15 products' dot products (length <= 512 here) count as well.
NS_BOUND = {torch.float32: rounding_bound(torch.float32, 37, products=15),  # 1.6e-5
            torch.bfloat16: rounding_bound(torch.bfloat16, 37)}  # 0.071
TORCH_NS_BOUND = rounding_bound(torch.bfloat16, 16)  # 0.047


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_matches_the_exact_quintic_and_torch_muon(dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in ((24, 40), (40, 24), (128, 512), (512, 128)):  # wide and tall
        g = torch.randn(shape, generator=gen)
        ours = scratch.newton_schulz(g, dtype=dtype)
        assert ours.dtype == dtype and ours.shape == g.shape
        # measured (torch 2.13, CPU): fp32 about 1.4e-6, bf16 about 0.03
        assert relative_error(ours, quintic_by_svd(g)) < NS_BOUND[dtype], shape
        torch_ns = _zeropower_via_newtonschulz(g, scratch.NS_COEFFICIENTS, 5, 1e-7)
        # both approximate the same exact value: they differ by at most the sum of their bounds
        assert relative_error(ours, torch_ns) < NS_BOUND[dtype] + TORCH_NS_BOUND, shape
        s = torch.linalg.svdvals(ours.float())
        # Jordan et al.'s coefficients map singular values into about [0.7, 1.2], not exactly 1.
        assert float(s.min()) > 0.6 and float(s.max()) < 1.25, s


def test_newton_schulz_bounds_catch_a_wrong_iteration():
    # the bounds are tight enough to tell 5 steps from 4, and a bf16 iteration from an fp32 one
    g = torch.randn(128, 512, generator=torch.Generator().manual_seed(1))
    exact = quintic_by_svd(g)
    four_steps = scratch.newton_schulz(g, steps=4, dtype=torch.float32)
    assert relative_error(four_steps, exact) > NS_BOUND[torch.bfloat16]
    bf16 = scratch.newton_schulz(g, dtype=torch.bfloat16)
    assert relative_error(bf16, exact) > NS_BOUND[torch.float32]


def test_newton_schulz_dtype_by_device():
    assert scratch.newton_schulz_dtype("cuda") == torch.bfloat16
    assert scratch.newton_schulz_dtype("mps") == torch.float32
    cpu = torch.bfloat16 if scratch.cpu_has_bf16_matmul() else torch.float32
    assert scratch.newton_schulz_dtype("cpu") == cpu
    assert scratch.newton_schulz(torch.randn(4, 6)).dtype == cpu
    scratch.cpu_has_bf16_matmul.cache_clear()
    with pytest.MonkeyPatch.context() as patch:  # oneDNN limited to AVX2: no bf16 instructions
        patch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
        assert scratch.newton_schulz_dtype("cpu") == torch.float32
    scratch.cpu_has_bf16_matmul.cache_clear()


def test_batched_newton_schulz_equals_one_at_a_time():
    stack = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(2))  # (n, rows, cols)
    batched = scratch.newton_schulz(stack, dtype=torch.float32)
    for g, o in zip(stack, batched, strict=True):
        single = scratch.newton_schulz(g, dtype=torch.float32)
        assert relative_error(o, single) < 2 * NS_BOUND[torch.float32]
    with pytest.raises(ValueError, match="matrix"):
        scratch.newton_schulz(torch.randn(2, 2, 3, 4))


def test_batched_muon_step_equals_per_matrix_step():
    models = [tiny_model() for _ in range(2)]
    x = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(3))
    for model, batched in zip(models, (False, True), strict=True):
        groups = param_groups(model, 0.1)
        for g in groups:
            g["use_muon"] = g["name"] == "decay"
        opt = scratch.Muon(groups, lr=1e-2, ns_dtype=torch.float32, batched=batched)
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
    start = tiny_model()
    with torch.no_grad():
        pairs = [(p - p0, p - q) for p, q, p0 in zip(models[0].parameters(),
                                                     models[1].parameters(), start.parameters(),
                                                     strict=True)]
    for moved, diff in pairs:
        # the update moved; batching may change only its rounding
        assert float(moved.norm()) > 0
        assert float(diff.norm()) <= 2 * NS_BOUND[torch.float32] * float(moved.norm())


def test_muon_rejects_vectors_in_muon_group():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="matrices only"):
        scratch.Muon([{"params": [w], "use_muon": True}])


def test_bad_hyperparameters_raise():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="lr"):
        scratch.SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        scratch.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        scratch.Adam(p, betas=(0.9, 1.0))


def test_first_adam_step_is_lr_times_sign():
    """Bias correction makes step 1 exactly lr * g / (|g| + eps): about lr per coordinate."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = scratch.Adam([w], lr=0.1, eps=0.0)
    w.grad = torch.tensor([0.5, -1e-3, 20.0])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([0.9, -1.9, 2.9]), atol=1e-7, rtol=0)


def test_build_optimizer_muon_groups():
    model = tiny_model()
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, scratch.Muon)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["use_muon"] and not by_name["no_decay"]["use_muon"]
    assert all(p.dim() == 2 for p in by_name["decay"]["params"])
    assert model.tok_emb.weight in by_name["no_decay"]["params"]  # embeddings go to AdamW


def test_build_optimizer_muon_keeps_untied_output_layer_on_adamw():
    """With tie_weights=False lm_head is an nn.Linear in the decay group; Muon is for hidden
    layers only, so the head must take the AdamW step (with weight decay), not Muon's."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=2,
                                    d_model=16, tie_weights=False))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, weight_decay=0.1))
    head = model.lm_head.weight
    (muon_group,) = [g for g in opt.param_groups if g["use_muon"]]
    assert not any(p is head for p in muon_group["params"])
    (head_group,) = [g for g in opt.param_groups if any(p is head for p in g["params"])]
    assert head_group["weight_decay"] == 0.1 and head_group["name"] == "output"
    hidden = {id(m.weight) for b in model.blocks for m in b.modules()
              if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in muon_group["params"]} == hidden  # every hidden matrix, nothing else
    n_total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_total


# ------------------------------------------------------------------------------- schedules
def test_schedules_against_hand_computed_values():
    base = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10, decay_fraction=0.2)
    assert lr_at(1, base) == pytest.approx(0.1)
    assert lr_at(5, base) == pytest.approx(0.5)
    assert lr_at(10, base) == pytest.approx(1.0)
    # cosine: progress p = (55 - 10) / 90 = 0.5 -> 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55
    assert lr_at(55, base) == pytest.approx(0.55)
    assert lr_at(100, base) == pytest.approx(0.1)
    linear = base.replace(schedule="linear")  # p = 0.5 -> 1 + (0.1 - 1) * 0.5 = 0.55
    assert lr_at(55, linear) == pytest.approx(0.55)
    assert lr_at(40, linear) == pytest.approx(1 - 0.9 / 3)
    wsd = base.replace(schedule="wsd")  # decay starts at step 80, linear to 0.1 at step 100
    assert lr_at(80, wsd) == pytest.approx(1.0)
    assert lr_at(90, wsd) == pytest.approx(0.55)
    assert lr_at(100, wsd) == pytest.approx(0.1)
    assert lr_at(70, base.replace(schedule="constant")) == pytest.approx(1.0)
    # cosine at p = 1/3: 0.1 + 0.9 * (1 + cos(pi / 3)) / 2 = 0.775
    assert lr_at(40, base) == pytest.approx(0.775)


@pytest.mark.parametrize("warmup,decay_fraction", [(30, 0.8), (30, 1.0), (20, 0.8), (10, 0.2),
                                                    (0, 1.0), (100, 0.2)])
def test_wsd_is_continuous_at_every_boundary(warmup, decay_fraction):
    """WSD with a warmup that ends after the decay would start (warmup 30 > 100 * (1 - 0.8)) used
    to jump from the peak down to the middle of the decay ramp (1.0 -> 0.876 at step 31). Now the
    decay starts where the warmup ends: no step changes the lr by more than the larger of one
    warmup step (lr / warmup) and one decay step (lr - m) / (steps - D)."""
    c = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=warmup, schedule="wsd",
                    decay_fraction=decay_fraction)
    lrs = [lr_at(k, c) for k in range(1, 101)]
    decay_start = max(warmup, 100 * (1 - decay_fraction))
    largest_step = max(1.0 / warmup if warmup else 0.0, 0.9 / max(1.0, 100 - decay_start))
    jumps = [abs(b - a) for a, b in zip(lrs, lrs[1:], strict=False)]
    assert max(jumps) <= largest_step + 1e-12, (max(jumps), largest_step)
    assert 1.0 - largest_step <= max(lrs) <= 1.0  # the peak (to within one step when warmup=0)
    assert lrs[-1] == pytest.approx(0.1 if warmup < 100 else 1.0)
    if warmup:  # the peak is reached exactly at the end of the warmup
        assert lrs[warmup - 1] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[warmup:], lrs[warmup + 1:], strict=False))


def test_wsd_warmup_past_decay_start_hand_computed():
    # warmup 30, decay_fraction 0.8: D = max(30, 20) = 30; step 31 -> 1 - 0.9 * 1 / 70
    c = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=30, schedule="wsd",
                    decay_fraction=0.8)
    assert lr_at(30, c) == pytest.approx(1.0)
    assert lr_at(31, c) == pytest.approx(1 - 0.9 / 70)
    assert lr_at(65, c) == pytest.approx(0.55)


# -------------------------------------------------------------------------------- surfaces
def test_quadratic_surface_values_and_gradient():
    s = ill_conditioned_quadratic(condition=10.0)
    w = torch.tensor([2.0, 1.0], requires_grad=True)
    value = s(w)
    value.backward()
    assert float(value.detach()) == pytest.approx(0.5 * (4 + 10))
    torch.testing.assert_close(w.grad, torch.tensor([2.0, 10.0]))
    rotated = ill_conditioned_quadratic(condition=10.0, angle=math.pi / 2)  # axes swapped
    assert float(rotated(torch.tensor([2.0, 1.0]))) == pytest.approx(0.5 * (1 + 40))


def test_rosenbrock_minimum_and_trajectory():
    s = rosenbrock()
    assert float(s(torch.tensor([1.0, 1.0]))) == 0.0
    assert float(s(torch.tensor([0.0, 0.0]))) == 1.0
    path = trajectory(s, lambda p: torch.optim.Adam(p, lr=0.1), steps=1000)
    assert path.shape == (1001, 2)
    assert abs(path[-1] - [1.0, 1.0]).max() < 0.05  # Adam finds the valley's end
    x, y, z = s.grid(5)
    assert x.shape == y.shape == z.shape == (5, 5)
    assert z[0, 0] == pytest.approx(float(s(torch.tensor([x[0, 0], y[0, 0]]))))


def test_gradient_descent_on_quadratic_converges_at_rate_of_condition():
    """GD with lr = 1 / h_max contracts the flat direction by (1 - 1/condition) per step."""
    s = ill_conditioned_quadratic(condition=10.0, start=(1.0, 1.0))
    path = trajectory(s, lambda p: scratch.SGD(p, lr=0.1), steps=5)
    assert path[-1] == pytest.approx([0.9**5, 0.0], abs=1e-12)


def test_muon_batches_by_default_only_in_bf16(monkeypatch):
    # measured (benchmarks/RESULTS.md): batching helps a bf16 Newton-Schulz, slows an fp32 one
    dims = []
    real = scratch.newton_schulz

    def recording(g, *args, **kwargs):
        dims.append(g.dim())
        return real(g, *args, **kwargs)

    monkeypatch.setattr(scratch, "newton_schulz", recording)
    x = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(3))
    for dtype, dim in ((torch.bfloat16, 3), (torch.float32, 2)):
        model, dims[:] = tiny_model(), []
        groups = param_groups(model, 0.1)
        for g in groups:
            g["use_muon"] = g["name"] == "decay"
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        scratch.Muon(groups, lr=1e-2, ns_dtype=dtype).step()
        assert dims and set(dims) == {dim}, (dtype, dims)


# ------------------------------------------------------------------------ parameter groups
def test_weight_decay_groups():
    model = Transformer(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, d_model=8))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decayed == ["blocks.0.attn.proj.weight", "blocks.0.attn.qkv.weight",
                       "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"]
    assert "tok_emb.weight" in {names[id(p)] for p in no_decay["params"]}
    n_total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n_total

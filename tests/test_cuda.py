"""The CUDA paths, on a real GPU: bf16 autocast, fused AdamW, flash attention against the naive
backend, torch.compile (inductor), fp16 with the GradScaler, resume, random draws on the device.

Marked ``cuda`` and skipped without a CUDA GPU, so ``make test`` collects them (and shows them
skipped) and ``make gpu-check`` runs them (``pytest -m cuda``). Sizes are tiny: the whole file
runs in about a minute, most of it inductor compiling.
"""

from __future__ import annotations

import pytest
import torch

from lmlab import TrainConfig, train
from lmlab.attention import causal_mask, scaled_dot_product_attention
from lmlab.checkpoint import checkpoint_name
from lmlab.device import autocast_dtype, compile_model, native_bf16
from lmlab.objectives import random_partition

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
]
CUDA = torch.device("cuda")
BF16_U = 2.0**-8  # bf16 unit roundoff (8 significand bits)
FP16_U = 2.0**-11  # fp16 unit roundoff


SHAPE = dict(block_size=64, n_layer=2, n_head=2, d_model=64)


@pytest.fixture
def tiny(shakespeare_model):
    """``tiny(seed=0, **changes)``: conftest's ``shakespeare_model`` at this module's SHAPE."""
    return lambda seed=0, **kw: shakespeare_model(seed, **{**SHAPE, **kw})


def cfg(**kw):
    base = dict(steps=20, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=10, eval_batches=2,
                progress=False, device="cuda")
    return TrainConfig(**{**base, **kw})


def test_auto_dtype_is_native_bf16_or_fp16():
    expected = torch.bfloat16 if native_bf16(CUDA) else torch.float16
    assert autocast_dtype(CUDA, "auto") == expected
    if hasattr(torch.cuda, "is_bf16_supported"):
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no including_emulation
            native = None
        assert native is None or native == native_bf16(CUDA)


def test_bf16_autocast_training_learns(shakespeare, tiny):
    run = train(tiny(), shakespeare, cfg(dtype="bfloat16"))
    model = run.model
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(torch.zeros(1, 8, dtype=torch.long, device=CUDA))
    assert logits.dtype == torch.bfloat16  # matmuls ran in bf16
    losses = [r["train_loss"] for r in run.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert run.final_val_loss < run.history[0]["train_loss"] - 0.3  # it learned (from ~4.2)


def test_adamw_is_fused_on_cuda_and_matches_the_reference(tiny):
    from lmlab.optim import build_optimizer

    model = tiny().to(CUDA)
    reference = tiny().to(CUDA)
    optimizer = build_optimizer(model, cfg(), CUDA)
    assert all(g.get("fused") for g in optimizer.param_groups)
    groups = build_optimizer(reference, cfg(), CUDA).param_groups  # the same grouping
    ref_opt = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"],
                                  "weight_decay": g["weight_decay"]} for g in groups],
                                betas=groups[0]["betas"], eps=groups[0]["eps"], foreach=False)
    x = torch.randint(0, 60, (4, 64), device=CUDA)
    for m, opt in ((model, optimizer), (reference, ref_opt)):
        m(x).float().logsumexp(-1).mean().backward()
        opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        # same fp32 update, different op order: a few ulps of the parameter
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_flash_sdpa_equals_naive_within_bf16_rounding():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device=CUDA).manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, device=CUDA, generator=g).bfloat16() for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash only: raises if it cannot run
        flash = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    naive, _ = scaled_dot_product_attention(q.float(), k.float(), v.float(), causal_mask(256,
                                                                                     device=CUDA))
    # each output is a convex combination of rows of v; flash rounds the weights P to bf16 before
    # P V and rounds the output to bf16: two roundings of at most u * max|v| each, so 2 u max|v|
    # bounds the error (the fp32 softmax itself adds far less)
    bound = 2 * BF16_U * v.float().abs().max().item()
    err = (flash.float() - naive).abs().max().item()
    assert err <= bound, f"max error {err:.2e} > 2 u max|v| = {bound:.2e}"


def test_causal_training_forward_takes_the_flash_path(tiny):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny().to(CUDA)
    x = torch.randint(0, 60, (4, 64), device=CUDA)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x).float().mean().backward()  # a mask tensor anywhere would raise here


def test_inductor_compile_equals_eager(shakespeare, tiny):
    model = tiny().to(CUDA)
    compiled = compile_model(model, True, ("test_cuda", 1))
    x = torch.randint(0, 60, (4, 64), device=CUDA)
    with torch.no_grad():
        # fp32 with TF32 off by default; inductor fuses and reorders: relative 1e-4 is ~1000 ulps
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    run = train(tiny(), shakespeare, cfg(steps=5, compile=True))
    assert len(run.history) == 5 and run.final_val_loss < 4.5


def test_fp16_trains_through_the_grad_scaler(shakespeare, tiny):
    fp32 = train(tiny(), shakespeare, cfg(steps=10, dtype="float32"))
    fp16 = train(tiny(), shakespeare, cfg(steps=10, dtype="float16"))
    assert all(torch.isfinite(torch.tensor([r["train_loss"] for r in fp16.history])))
    # the first step's loss comes from the same weights: fp16 matmuls over d_model = 64 terms,
    # error within sqrt(64) u relative
    first16, first32 = fp16.history[0]["train_loss"], fp32.history[0]["train_loss"]
    assert first16 == pytest.approx(first32, rel=8 * FP16_U)
    assert fp16.final_val_loss < fp16.history[0]["train_loss"] - 0.2


def test_resume_on_gpu_matches_within_tolerance(shakespeare, tiny, tmp_path):
    """Exactly on CPU; on CUDA atomics in backward reorder sums, so within tolerance."""
    folder = tmp_path / "ckpt"
    config = cfg(steps=10, dtype="float32", checkpoint_dir=str(folder), checkpoint_every=5)
    whole = train(tiny(), shakespeare, config)
    resumed = train(tiny(seed=1), shakespeare, config, resume=folder / checkpoint_name(5))
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    drift = (flat(whole.model) - flat(resumed.model)).norm() / flat(whole.model).norm()
    assert drift < 1e-3  # Adam can flip a near-zero gradient's update, so not per element


def test_random_draws_take_a_cuda_generator(shakespeare, tiny):
    g = torch.Generator(device=CUDA).manual_seed(0)
    parts = random_partition(20, 4, g)
    assert sum(parts) == 20 and len(parts) == 4 and min(parts) >= 1
    run = train(tiny(causal=False), shakespeare, cfg(steps=3, objective="span"))
    assert len(run.history) == 3

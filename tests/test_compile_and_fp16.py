"""The two GPU-only training paths, run at tiny size on the CPU so they cannot rot unseen:
``TrainConfig(compile=True)`` and fp16 autocast with the ``GradScaler``; and the
compile helper's cache reset and fallback warnings. One module, so that one
test worker pays dynamo's import (about 10 s).

Compile runs with the ``aot_eager`` backend: dynamo captures our model and AOTAutograd traces its
forward and backward, which is where our code can break compilation (graph breaks, Python-side
branches, untraceable checks); only inductor's code generation is left out. Measured on the shared
2-core machine: inductor took 154 s cold (its C++ cache empty, as in a fresh clone) and 10 s warm
for this 1-layer model; ``aot_eager`` takes about 15 s, most of it importing dynamo. Inductor
itself runs in ``make gpu-check`` (tests/test_cuda.py).
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from lmlab import TrainConfig, device, train
from lmlab.device import CompileFallbackWarning, compile_model

SHAPE = dict(block_size=8, n_layer=1, n_head=1, d_model=16)


@pytest.fixture
def tiny(shakespeare_model):
    """``tiny()``: conftest's ``shakespeare_model`` at this module's SHAPE, seed 0."""
    return lambda: shakespeare_model(0, **SHAPE)


def cfg(**kw):
    return TrainConfig(steps=4, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=4,
                       eval_batches=1, progress=False, device="cpu", **kw)


def losses(run):
    """Every step's train loss and gradient norm, and the validation losses, in one list."""
    return [r[key] for r in run.history for key in ("train_loss", "grad_norm", "val_loss")
            if key in r]


def test_compiled_training_equals_eager_in_one_graph(shakespeare, tiny, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    monkeypatch.setattr(device, "_compiled_signature", [])  # reset dynamo: count our graphs only
    eager = train(tiny(), shakespeare, cfg())
    counters.clear()
    compiled = train(tiny(), shakespeare, cfg(compile=True))
    # the compiled path ran: dynamo captured the model as one graph, with no graph break (a
    # break splits the GPU kernels and would show up here first)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    # aot_eager runs the same aten ops in the same order: equal up to float32 rounding of a
    # reordered reduction (unit roundoff 6e-8, sums of <= 64 terms: < 1e-5 relative)
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    torch._dynamo.reset()


def test_fp16_autocast_trains_through_the_grad_scaler(shakespeare, tiny, monkeypatch):
    """dtype="float16" autocasts matmuls to fp16 and scales the loss with a GradScaler (fp16's
    range ends at 65504 and its smallest normal is 6e-5: small gradients underflow unscaled)."""
    steps = []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step",  # fp32 runs a disabled scaler: a no-op
                        lambda self, opt, *a, **k: (self.is_enabled() and
                                                    steps.append(self.get_scale()))
                        or real_step(self, opt, *a, **k))
    fp32 = train(tiny(), shakespeare, cfg())
    fp16 = train(tiny(), shakespeare, cfg(dtype="float16"))
    assert steps == [65536.0] * 4  # every step went through the scaler, at its initial scale
    # fp16 really ran (the results differ from fp32) and stays within fp16 rounding: unit
    # roundoff 2^-11 = 4.9e-4, relative, on the loss and the gradient norm
    assert losses(fp16) != losses(fp32)
    assert losses(fp16) == pytest.approx(losses(fp32), rel=2**-11)


# ---------------------------------------------- compile_model: bounded caches, loud fallbacks


def test_compile_model_off_returns_the_model():
    model = nn.Linear(2, 2)
    assert compile_model(model, enabled=False, signature="x") is model


def test_compile_model_resets_dynamo_only_when_the_shapes_change(monkeypatch):
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    monkeypatch.setattr(device, "_compiled_signature", [])
    model = nn.Linear(2, 2)
    compile_model(model, True, ("shape", 1), backend="eager")
    compile_model(model, True, ("shape", 1), backend="eager")  # same shapes: graphs reused
    assert len(resets) == 1
    compile_model(model, True, ("shape", 2), backend="eager")  # new shapes: start afresh
    assert len(resets) == 2


def test_compile_model_warns_when_dynamo_falls_back_to_eager(monkeypatch):
    """Past the recompile limit dynamo runs the function uncompiled with only a log line."""
    monkeypatch.setattr(device, "_compiled_signature", [])
    compiled = compile_model(nn.Linear(3, 1), True, "fallback", backend="eager", dynamic=False)
    with torch._dynamo.config.patch(recompile_limit=1), \
            pytest.warns(CompileFallbackWarning, match="recompile_limit"):
        for batch in (1, 2, 3):  # each batch size a new static shape: a recompile
            compiled(torch.ones(batch, 3))
    torch._dynamo.reset()


def test_compile_model_warns_and_runs_eagerly_where_compile_is_unavailable(monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = nn.Linear(2, 2)
    with pytest.warns(CompileFallbackWarning, match="uncompiled"):
        assert compile_model(model, True, "unavailable") is model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_model(model, False) is model

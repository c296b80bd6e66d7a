"""The two GPU-only training paths, run at tiny size on the CPU so they cannot rot unseen
(issue 13): ``TrainConfig(compile=True)`` and fp16 autocast with the ``GradScaler``.

Compile runs with the ``aot_eager`` backend: dynamo captures our model and AOTAutograd traces its
forward and backward, which is where our code can break compilation (graph breaks, Python-side
branches, untraceable checks); only inductor's code generation is left out. Measured on the shared
2-core machine: inductor took 154 s cold (its C++ cache empty, as in a fresh clone) and 10 s warm
for this 1-layer model; ``aot_eager`` takes about 15 s, most of it importing dynamo. Inductor
itself runs in ``make gpu-check`` (tests/test_cuda.py).
"""

from __future__ import annotations

import functools

import pytest
import torch

from lmlab import ModelConfig, TrainConfig, Transformer, device, train
from lmlab.data import char_corpus


@pytest.fixture(scope="module")
def corpus():
    return char_corpus("tinyshakespeare")


def tiny(corpus):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=8,
                                   n_layer=1, n_head=1, d_model=16))


def cfg(**kw):
    return TrainConfig(steps=4, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=4,
                       eval_batches=1, progress=False, device="cpu", **kw)


def losses(run):
    """Every step's train loss and gradient norm, and the validation losses, in one list."""
    return [r[key] for r in run.history for key in ("train_loss", "grad_norm", "val_loss")
            if key in r]


def test_compiled_training_equals_eager_in_one_graph(corpus, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    monkeypatch.setattr(device, "_compiled_signature", [])  # reset dynamo: count our graphs only
    eager = train(tiny(corpus), corpus, cfg())
    counters.clear()
    compiled = train(tiny(corpus), corpus, cfg(compile=True))
    # the compiled path ran: dynamo captured the model as one graph, with no graph break (a
    # break splits the GPU kernels and would show up here first)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    # aot_eager runs the same aten ops in the same order: equal up to float32 rounding of a
    # reordered reduction (unit roundoff 6e-8, sums of <= 64 terms: < 1e-5 relative)
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    torch._dynamo.reset()


def test_fp16_autocast_trains_through_the_grad_scaler(corpus, monkeypatch):
    """dtype="float16" autocasts matmuls to fp16 and scales the loss with a GradScaler (fp16's
    range ends at 65504 and its smallest normal is 6e-5: small gradients underflow unscaled)."""
    steps = []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step",
                        lambda self, opt, *a, **k: steps.append(self.get_scale())
                        or real_step(self, opt, *a, **k))
    fp32 = train(tiny(corpus), corpus, cfg())
    fp16 = train(tiny(corpus), corpus, cfg(dtype="float16"))
    assert steps == [65536.0] * 4  # every step went through the scaler, at its initial scale
    # fp16 really ran (the results differ from fp32) and stays within fp16 rounding: unit
    # roundoff 2^-11 = 4.9e-4, relative, on the loss and the gradient norm
    assert losses(fp16) != losses(fp32)
    assert losses(fp16) == pytest.approx(losses(fp32), rel=2**-11)

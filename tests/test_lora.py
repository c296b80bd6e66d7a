"""LoRA: starts equal to the base model, merges exactly, trains only A and B."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import ModelConfig
from lmlab.lora import (
    TARGETS,
    LoRALinear,
    add_lora,
    lora_parameter_count,
    merge_lora,
    trainable_parameters,
)
from lmlab.model import Transformer

CONFIG = ModelConfig(vocab_size=17, block_size=12, n_layer=2, n_head=2, d_model=16)


def model(seed=0):
    torch.manual_seed(seed)
    return Transformer(CONFIG)


def ids(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG.vocab_size, (3, 12), generator=g)  # (B, T)


def test_adapted_model_starts_bit_identical_to_the_base():
    base = model().eval()
    adapted = add_lora(base, rank=4).eval()
    with torch.no_grad():
        assert torch.equal(adapted(ids()), base(ids()))  # B = 0: the correction is exactly zero


def test_only_adapters_train_and_the_count_is_r_times_in_plus_out():
    base = model()
    adapted = add_lora(base, rank=3)
    # per block: qkv 16->48, attn.proj 16->16, mlp.fc 16->64, mlp.proj 64->16
    per_block = 3 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))
    assert trainable_parameters(adapted) == 2 * per_block == lora_parameter_count(base, 3)
    names = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("lora_a", "lora_b")) for n in names)
    assert all(p.requires_grad for p in base.parameters())  # the original is untouched


def test_gradients_reach_b_first_and_a_only_through_b():
    adapted = add_lora(model(), rank=2)
    loss = F.cross_entropy(adapted(ids()).flatten(0, 1), ids(2).flatten())
    loss.backward()
    layer = adapted.blocks[0].attn.qkv
    assert layer.lora_b.grad.abs().sum() > 0
    assert torch.count_nonzero(layer.lora_a.grad) == 0  # dL/dA = scale * B^T (...) = 0 at B = 0
    assert layer.base.weight.grad is None


def test_merged_model_equals_the_adapted_one():
    adapted = add_lora(model(), rank=4, alpha=8.0)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    merged = merge_lora(adapted)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    adapted.eval(), merged.eval()
    with torch.no_grad():
        a, m = adapted(ids()), merged(ids())
    assert (a - model().eval()(ids())).abs().max() > 1e-2  # the adapters changed the outputs
    # fp32: (W + s B A) x and W x + s B (A x) differ by summation order only: a few ulps of the
    # logits' scale through 2 layers; 1e-5 relative to max |logit| leaves a 10x margin.
    torch.testing.assert_close(m, a, rtol=0, atol=1e-5 * a.abs().max().item())


def test_lora_linear_matches_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(4, 6)
    expected = x @ base.weight.T + base.bias + (3.0 / 2) * x @ layer.lora_a.T @ layer.lora_b.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 1.5 * layer.lora_b @ layer.lora_a)
    assert layer.lora_a.abs().max() <= 1 / 6**0.5  # nn.Linear's uniform bound 1/sqrt(in)


@pytest.mark.parametrize("rank", [0, -1, 2.5, True, 7])
def test_bad_rank_is_refused(rank):
    with pytest.raises(ValueError, match="rank="):
        LoRALinear(nn.Linear(6, 5), rank=rank)


def test_bad_targets_and_double_adapters_are_refused():
    with pytest.raises(ValueError, match="targets="):
        add_lora(model(), rank=2, targets=("attn.nope",))
    with pytest.raises(ValueError, match="already has an adapter"):
        add_lora(add_lora(model(), rank=2), rank=2)
    assert set(TARGETS) == {"attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"}

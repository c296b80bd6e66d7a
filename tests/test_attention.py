"""Attention from scratch against PyTorch's own, masks, positions, multi-head reshapes, costs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab import ModelConfig, Transformer
from lmlab.attention import (
    MultiHeadAttention,
    RotaryEmbedding,
    attention_maps,
    causal_mask,
    key_only_attention,
    padding_mask,
    scaled_dot_product_attention,
    score_scale_statistics,
    sinusoidal_positions,
    softmax_entropy,
)
from lmlab.attention_cost import attention_fn, measure, score_bytes, sweep_lengths

FP32 = {"atol": 1e-6, "rtol": 1e-5}  # fp32 reference comparisons


def _qkv(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g) for _ in range(3))


def test_sdpa_matches_pytorch_with_and_without_masks():
    q, k, v = _qkv(2, 3, 7, 8)
    out, w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **FP32)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 7), **FP32)
    mask = causal_mask(7)
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **FP32)
    out, _ = scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), **FP32)


def test_sdpa_hand_computed_two_keys():
    # q.k = (1, 0) with d_k = 1 -> scores (1, 0); weights (e/(1+e), 1/(1+e)); v = (0, 1)
    q = torch.tensor([[1.0]])
    k = torch.tensor([[1.0], [0.0]])
    v = torch.tensor([[0.0], [1.0]])
    out, w = scaled_dot_product_attention(q, k, v)
    e = math.e
    torch.testing.assert_close(w, torch.tensor([[e / (1 + e), 1 / (1 + e)]]), **FP32)
    torch.testing.assert_close(out, torch.tensor([[1 / (1 + e)]]), **FP32)


def test_sdpa_rejects_bad_input():
    q, k, v = _qkv(1, 4, 8)
    with pytest.raises(ValueError, match="bool"):
        scaled_dot_product_attention(q, k, v, torch.ones(4, 4))
    with pytest.raises(ValueError, match="d_k"):
        scaled_dot_product_attention(q, k[..., :4], v)


def test_causal_mask_future_weights_are_exactly_zero():
    q, k, v = _qkv(1, 2, 6, 4)
    _, w = scaled_dot_product_attention(q, k, v, causal_mask(6))
    assert (w.triu(diagonal=1) == 0).all()
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True] * 5]


def test_padding_mask_hides_pad_keys_exactly():
    ids = torch.tensor([[5, 6, 0, 0], [1, 2, 3, 0]])
    m = padding_mask(ids, pad_id=0)  # (B, 1, 1, T)
    assert m.shape == (2, 1, 1, 4)
    q, k, v = _qkv(2, 3, 4, 4)
    _, w = scaled_dot_product_attention(q, k, v, m)
    assert (w[0, :, :, 2:] == 0).all() and (w[1, :, :, 3] == 0).all()


def test_sinusoidal_table_formula_and_scale():
    table = sinusoidal_positions(10, 6)
    p, i = 3, 1  # PE[3, 2] = sin(3 / 10000^(2/6)), PE[3, 3] = cos(same)
    assert table[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)), abs=1e-6)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)), abs=1e-6)
    torch.testing.assert_close(sinusoidal_positions(10, 6, 0.5), 0.5 * table)
    torch.testing.assert_close(table.norm(dim=-1), torch.full((10,), math.sqrt(3.0)), **FP32)


def test_model_sinusoidal_table_is_scaled_to_embedding_size():
    model = Transformer(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=16,
                                    pos="sinusoidal"))
    rows = model.pos_table.norm(dim=-1)
    torch.testing.assert_close(rows, torch.full((8,), 0.5), **FP32)


def test_rope_preserves_norm_and_depends_on_relative_position_only():
    rope = RotaryEmbedding(8, 32)
    q, k, _ = _qkv(1, 1, 1, 8)
    torch.testing.assert_close(rope(q, start=5).norm(), q.norm(), **FP32)
    dot = lambda a, b: (rope(q, start=a) * rope(k, start=b)).sum()  # noqa: E731
    torch.testing.assert_close(dot(7, 3), dot(14, 10), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dot(7, 3), dot(7, 5), atol=1e-3)
    with pytest.raises(ValueError, match="exceed"):
        rope(q, start=32)


@pytest.mark.parametrize("d_in", [12, 16])
def test_multihead_equals_pytorch_multihead_attention(d_in):
    """d_in != d_model is where a bug hides. Reference: nn.MultiheadAttention with kdim = vdim =
    d_in and the same weights; its query input must be d_model wide, so it gets x W_Q^T and an
    identity query projection (the bias b_Q is added by the reference)."""
    torch.manual_seed(0)
    d_model, n_head, t = 16, 4, 5
    mha = MultiHeadAttention(d_model, n_head, d_in=d_in, backend="naive")
    ref = torch.nn.MultiheadAttention(d_model, n_head, batch_first=True, kdim=d_in, vdim=d_in)
    w_q, w_k, w_v = mha.qkv.weight.split(d_model)  # 3 x (d_model, d_in)
    x = torch.randn(2, t, d_in)
    with torch.no_grad():
        if d_in == d_model:
            ref.in_proj_weight.copy_(mha.qkv.weight)
            query = x
        else:
            ref.q_proj_weight.copy_(torch.eye(d_model))
            ref.k_proj_weight.copy_(w_k)
            ref.v_proj_weight.copy_(w_v)
            query = x @ w_q.T  # (B, T, d_model)
        ref.in_proj_bias.copy_(mha.qkv.bias)
        ref.out_proj.weight.copy_(mha.proj.weight)
        ref.out_proj.bias.copy_(mha.proj.bias)
        expected, w_ref = ref(query, x, x, attn_mask=~causal_mask(t), average_attn_weights=False)
    out, w = mha(x, is_causal=True, return_weights=True)
    assert out.shape == (2, t, d_model)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    sdpa = MultiHeadAttention(d_model, n_head, d_in=d_in, backend="sdpa")
    sdpa.load_state_dict(mha.state_dict())
    torch.testing.assert_close(sdpa(x, is_causal=True), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="d_in"):
        mha(torch.randn(2, t, d_in + 1))


def test_heads_are_independent_subspaces():
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3, backend="naive")
    x = torch.randn(1, 5, 12)
    before, _ = mha.heads(x, is_causal=True)  # (B, H, T, d_k)
    with torch.no_grad():  # change head 2's query weights only (rows 4..7 of W_Q)
        mha.qkv.weight[4:8] += torch.randn(4, 12)
    after, _ = mha.heads(x, is_causal=True)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]], atol=0, rtol=0)
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_kv_cache_gives_the_same_outputs_as_full_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, rope=RotaryEmbedding(4, 16))
    x = torch.randn(1, 6, 8)
    full = mha(x, is_causal=True)
    cache: dict = {}
    parts = [mha(x[:, :4], is_causal=True, cache=cache)]
    parts += [mha(x[:, t : t + 1], is_causal=True, cache=cache) for t in (4, 5)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-6, rtol=1e-5)
    assert cache["k"].shape == (1, 2, 6, 4)


def test_softmax_entropy_reference_values():
    w = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(softmax_entropy(w), torch.tensor([math.log(4), 0.0]))


def test_key_only_attention_gives_every_query_the_same_row():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g)  # (T, d_in)
    w_key, w = torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    a = key_only_attention(x, w_key, w)
    assert a.shape == (6, 6)
    torch.testing.assert_close(a, a[:1].expand(6, -1), atol=0, rtol=0)
    torch.testing.assert_close(a.sum(-1), torch.ones(6), **FP32)


def test_score_scale_statistics_match_theory():
    """Var(q.k) = d_k for N(0,1) entries: 1 with the scale, d_k without (5% tolerance: 256 x 64
    scores give a relative standard error of about 1.5%); the unscaled softmax saturates."""
    for d_k in (16, 256):
        s = score_scale_statistics(d_k, scaled=True, seed=1)
        u = score_scale_statistics(d_k, scaled=False, seed=1)
        assert s["score_var"] == pytest.approx(1.0, rel=0.05)
        assert u["score_var"] == pytest.approx(d_k, rel=0.05)
    big = score_scale_statistics(1024, scaled=False, n_queries=128)
    assert big["max_weight"] > 0.9 and big["entropy"] < 0.1 * math.log(64)
    assert big["grad_norm"] < 0.5 * score_scale_statistics(1024, True, n_queries=128)["grad_norm"]
    with pytest.raises(ValueError):
        score_scale_statistics(0, scaled=True)


def test_attention_maps_shape_and_rows():
    model = Transformer(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8))
    maps = attention_maps(model, torch.arange(6))
    assert maps.shape == (2, 2, 6, 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 6), **FP32)
    assert (maps.triu(diagonal=1) == 0).all()
    with pytest.raises(ValueError, match="one sequence"):
        attention_maps(model, torch.zeros(2, 3, dtype=torch.long))


def test_cost_functions_agree_and_memory_is_measured():
    q, k, v = _qkv(1, 2, 9, 4)
    naive, fused = attention_fn("naive"), attention_fn("sdpa")
    torch.testing.assert_close(naive(q, k, v), fused(q, k, v), **FP32)
    with pytest.raises(ValueError, match="backend"):
        attention_fn("flash")
    assert score_bytes(2, 3, 10) == 2 * 3 * 100 * 4
    rows = sweep_lengths([64, 128], heads=2, head_dim=8, repeats=1)
    naive = {r["T"]: r for r in rows if r["backend"] == "naive"}
    # the explicit score tensor is allocated: its size is the largest single allocation
    assert naive[128]["largest_alloc_bytes"] == score_bytes(1, 2, 128)
    assert 3.5 < naive[128]["allocated_bytes"] / naive[64]["allocated_bytes"] < 4.5  # ~T^2
    fused = measure("sdpa", 128, heads=2, head_dim=8, repeats=1)
    assert fused["allocated_bytes"] < score_bytes(1, 2, 128)


# --------------------------------------------- fully masked rows, masks that rule a kernel out


def test_fully_masked_rows_give_zeros_in_both_backends_like_pytorch():
    """A query that may attend to nothing (an all-padding row, or left padding under a causal
    mask): softmax over -inf alone is 0/0 = NaN; PyTorch's SDPA returns 0 and so must we."""
    q, k, v = _qkv(2, 3, 4, 8)  # (B, H, T, d_k)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, 1] = False  # batch 0: query 1 sees no key
    mask[1] = causal_mask(4) & torch.tensor([False, False, True, True])  # left padding, causal
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               **FP32)
    assert out.isfinite().all() and (out[0, :, 1] == 0).all() and (out[1, :, :2] == 0).all()
    assert (weights[0, :, 1] == 0).all()
    torch.testing.assert_close(weights.sum(-1), mask.any(-1).expand(2, 3, 4).float())
    q.requires_grad_(True)
    scaled_dot_product_attention(q, k, v, mask)[0].sum().backward()
    assert q.grad.isfinite().all() and (q.grad[0, :, 1] == 0).all()


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_both_backends_check_the_mask_alike(backend):
    mha = MultiHeadAttention(8, 2, backend=backend)
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="bool"):
        mha(x, torch.zeros(4, 4))  # an additive float mask: SDPA would take it silently
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(x, torch.ones(3, 5, dtype=torch.bool))


def _spy_sdpa(monkeypatch):
    """Record the attn_mask and is_causal of every call to PyTorch's fused attention."""
    calls, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((attn_mask, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_causal_sdpa_builds_no_mask_and_lets_the_kernel_mask(monkeypatch):
    """A (T, T) mask per layer is wasted work on the fused path, and a mask tensor rules the
    flash kernel out: the causal forward passes is_causal=True and no mask."""
    built = []
    import lmlab.attention as attention

    real_mask = attention.causal_mask
    monkeypatch.setattr(attention, "causal_mask",
                        lambda *a, **k: built.append(a) or real_mask(*a, **k))
    calls = _spy_sdpa(monkeypatch)
    config = ModelConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, d_model=16)
    idx = torch.randint(0, 11, (2, 8))
    logits = Transformer(config)(idx)
    assert built == [] and calls == [(None, True)] * 3
    torch.manual_seed(0)
    naive = Transformer(config.replace(attention="naive"))
    torch.manual_seed(0)
    fused = Transformer(config)
    torch.testing.assert_close(fused(idx), naive(idx), **FP32)
    assert len(built) == 3 and logits.shape == (2, 8, 11)  # the naive path does need it


def test_kv_cache_decoding_passes_no_mask(monkeypatch):
    """One new query at the end of the cached keys may see every key: its causal mask is all
    True, and passing it anyway keeps the kernel from its fastest path."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 6, 8)
    full = mha(x, is_causal=True)
    calls = _spy_sdpa(monkeypatch)
    cache: dict = {}
    parts = [mha(x[:, :4], is_causal=True, cache=cache)]  # prefill: kernel-side causal mask
    parts += [mha(x[:, t : t + 1], is_causal=True, cache=cache) for t in (4, 5)]  # decode
    assert calls == [(None, True), (None, False), (None, False)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-6, rtol=1e-5)
    past = {"k": cache["k"][:, :, :4], "v": cache["v"][:, :, :4]}
    two = mha(x[:, 4:6], is_causal=True, cache=past)  # two queries after a cache: mask needed
    assert calls[-1][0] is not None and calls[-1][0].tolist() == causal_mask(2, 6).tolist()
    torch.testing.assert_close(two, full[:, 4:6], atol=1e-6, rtol=1e-5)


def test_unscaled_sinusoidal_table_is_35_times_the_token_embeddings():
    """The docstring's number: rows of norm sqrt(d/2) against N(0, 0.02) rows of norm
    0.02 sqrt(d) (for large d), a ratio of sqrt(1/2) / 0.02 = 35.36 whatever d is."""
    d = 1024
    gen = torch.Generator().manual_seed(0)
    embedding_rows = torch.empty(512, d).normal_(0, 0.02, generator=gen)  # (512, d)
    ratio = sinusoidal_positions(512, d).norm(dim=-1).mean() / embedding_rows.norm(dim=-1).mean()
    # the mean of 512 row norms estimates 0.02 sqrt(d) with relative sd 1 / sqrt(2 d 512) = 1e-3
    # (and bias 1 / (4 d) = 2e-4): 5e-3 is five standard deviations
    assert ratio.item() == pytest.approx(math.sqrt(0.5) / 0.02, rel=5e-3)
    assert 35.2 < ratio.item() < 35.6  # the docstring's 35.4, not "about 50"

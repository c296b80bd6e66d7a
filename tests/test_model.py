"""The Transformer: shapes, causality, backends, positions, tying, initialization."""

import math

import pytest
import torch

from lmlab import ModelConfig, Transformer

V = 30


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, d_model=16)
    base.update(kw)
    return ModelConfig(**base)


def test_logits_shape_and_tied_embeddings():
    torch.manual_seed(0)
    m = Transformer(tiny())
    x = torch.randint(0, V, (3, 10))
    assert m(x).shape == (3, 10, V)
    assert m.lm_head.weight is m.tok_emb.weight


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "none"])
def test_naive_and_sdpa_backends_agree(pos):
    torch.manual_seed(0)
    naive = Transformer(tiny(pos=pos, attention="naive"))
    sdpa = Transformer(tiny(pos=pos, attention="sdpa"))
    sdpa.load_state_dict(naive.state_dict())
    x = torch.randint(0, V, (2, 12))
    torch.testing.assert_close(naive(x), sdpa(x), rtol=1e-5, atol=1e-5)  # fp32


@pytest.mark.parametrize("causal", [True, False])
def test_causal_flag_controls_information_flow(causal):
    torch.manual_seed(0)
    m = Transformer(tiny(causal=causal)).eval()
    x = torch.randint(0, V, (1, 12))
    x2 = x.clone()
    x2[0, 8] = (x2[0, 8] + 1) % V  # change a "future" token
    same_prefix = torch.allclose(m(x)[0, :8], m(x2)[0, :8], atol=1e-6)
    assert same_prefix is causal  # GPT ignores the future, BERT does not


def test_attention_weights_are_returned_and_causal():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    logits, att = m(torch.randint(0, V, (2, 9)), return_attention=True)
    assert len(att) == 2 and att[0].shape == (2, 2, 9, 9)
    torch.testing.assert_close(att[0].sum(-1), torch.ones(2, 2, 9))
    assert float(att[1].detach().triu(diagonal=1).abs().max()) == 0.0


def test_key_padding_hides_padded_positions():
    torch.manual_seed(0)
    m = Transformer(tiny(causal=False)).eval()
    x = torch.randint(0, V, (1, 10))
    keep = torch.ones(1, 10, dtype=torch.bool)
    keep[0, 7:] = False
    x2 = x.clone()
    x2[0, 7:] = 0  # different padding content
    out1, out2 = m(x, key_padding=keep), m(x2, key_padding=keep)
    torch.testing.assert_close(out1[0, :7], out2[0, :7], rtol=1e-5, atol=1e-6)


def test_too_long_input_is_a_clear_error():
    m = Transformer(tiny())
    with pytest.raises(ValueError, match="block_size=16"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_gpt2_initialization_statistics():
    torch.manual_seed(0)
    cfg = tiny(n_layer=4, d_model=64, n_head=4)
    m = Transformer(cfg)
    fc = m.blocks[0].mlp.fc.weight
    proj = m.blocks[0].mlp.proj.weight
    # sample std within 5% of the target (thousands of samples each)
    assert fc.std().item() == pytest.approx(0.02, rel=0.05)
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert float(m.blocks[0].attn.qkv.bias.detach().abs().max()) == 0.0


def test_initial_loss_is_close_to_log_vocab():
    torch.manual_seed(0)
    cfg = tiny(vocab_size=69, d_model=64, n_head=4)
    m = Transformer(cfg)
    x = torch.randint(0, 69, (8, 16))
    y = torch.randint(0, 69, (8, 16))  # next tokens, independent of the inputs
    loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten())
    assert abs(loss.item() - math.log(69)) < 0.1  # small init: near-uniform predictions


def test_parameter_count_counts_tied_weights_once():
    cfg = tiny(pos="learned")
    m = Transformer(cfg)
    d, L, Vv, T = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.block_size
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + 4 * d
    expected = Vv * d + L * per_block + 2 * d  # + final LayerNorm
    assert m.num_parameters() == expected
    assert m.num_parameters(non_embedding=False) == expected + T * d

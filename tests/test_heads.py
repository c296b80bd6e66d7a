"""Heads: pooling, the linear probe against known separable data, fine-tuning."""

import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab.heads import (
    accuracy,
    bidirectional_mask,
    classifier_accuracy,
    fine_tune,
    frozen_features,
    linear_probe,
    pool,
    transformer_with_pair_head,
)


def tiny(**kw) -> ModelConfig:
    base = {"vocab_size": 12, "block_size": 8, "n_layer": 1, "n_head": 2, "d_model": 16}
    base.update(kw)
    return ModelConfig(**base)


def test_pool_hand_computed():
    h = torch.arange(12.0).view(1, 3, 4)  # (B, T, C)
    kp = torch.tensor([[True, True, False]])
    assert pool(h, kp, "cls").tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert pool(h, kp, "mean").tolist() == [[2.0, 3.0, 4.0, 5.0]]  # mean of rows 0 and 1
    with pytest.raises(ValueError, match="pooling"):
        pool(h, kp, "max")


def test_bidirectional_mask_hides_only_padding():
    m = bidirectional_mask(torch.tensor([[True, True, False]]))
    assert m.shape == (1, 1, 3, 3) and m[0, 0].tolist() == [[True, True, False]] * 3


def test_linear_probe_separates_gaussian_blobs_and_matches_standardization():
    g = torch.Generator().manual_seed(0)
    centers = 3.0 * torch.eye(3, 5)
    y = torch.arange(600) % 3
    x = centers[y] + torch.randn(600, 5, generator=g) + 100.0  # offset: standardization matters
    layer = linear_probe(x[:450], y[:450], 3, steps=50)
    # Bayes error of these blobs is ~1%: a correct probe gets > 95% on held-out points
    assert accuracy(layer(x[450:]), y[450:]) > 0.95
    with pytest.raises(ValueError, match="labels"):
        linear_probe(x, y + 1, 3)


def test_frozen_features_match_hidden_mean_and_leave_model_mode():
    torch.manual_seed(0)
    model = Transformer(tiny())
    ids = torch.randint(0, 12, (5, 8))
    kp = torch.ones(5, 8, dtype=torch.bool)
    feats = frozen_features(model, ids, kp, batch_size=2)
    assert model.training
    model.eval()
    torch.testing.assert_close(feats, model.hidden(ids).mean(1), rtol=0, atol=1e-6)


def test_fine_tune_learns_a_token_presence_task_and_keeps_the_body():
    torch.manual_seed(0)
    body = Transformer(tiny(causal=False))
    before = {k: v.clone() for k, v in body.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 10, (256, 8), generator=g)
    labels = (ids == 3).any(1).long()  # does token 3 occur? (about half the rows)
    kp = torch.ones_like(ids, dtype=torch.bool)
    clf = fine_tune(body, ids[:192], kp[:192], labels[:192], 2, steps=150, lr=3e-3, seed=0)
    majority = max(labels[192:].float().mean().item(), 1 - labels[192:].float().mean().item())
    assert classifier_accuracy(clf, ids[192:], kp[192:], labels[192:]) > majority + 0.15
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())


def test_pair_head_shape_and_init():
    model = transformer_with_pair_head(tiny())
    assert model.pair_head.weight.shape == (2, 16) and (model.pair_head.bias == 0).all()
    assert model.pair_head.weight.std().item() == pytest.approx(0.02, rel=0.5)


def test_pair_head_accuracy_of_a_constant_head_is_the_share_of_its_class():
    from lmlab.data import CharTokenizer
    from lmlab.heads import pair_head_accuracy
    from lmlab.pairs import line_pair_bank

    tok = CharTokenizer.from_text("abcdefghij\n")
    model = transformer_with_pair_head(tiny(vocab_size=tok.vocab_size, block_size=16))
    with torch.no_grad():
        model.pair_head.weight.zero_()
        model.pair_head.bias.copy_(torch.tensor([0.0, 1.0]))  # always "in order"
    text = torch.randint(0, tok.n_chars, (600,), generator=torch.Generator().manual_seed(0))
    bank = line_pair_bank(text, tok, 6)
    for task in ("nsp", "sop"):
        ids, labels = bank.sample(64, task, tok, 16, torch.Generator().manual_seed(5))
        acc = pair_head_accuracy(model, ids, ids != tok.pad_id, labels)
        assert acc == pytest.approx(labels.float().mean().item(), abs=1e-9)
        assert 0.2 < acc < 0.8  # both classes present, so a constant head is not always right

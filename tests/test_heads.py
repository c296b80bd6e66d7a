"""Heads: pooling, the linear probe against known separable data, fine-tuning."""

import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab.heads import (
    accuracy,
    bidirectional_mask,
    classifier_accuracy,
    example_losses,
    fine_tune,
    frozen_features,
    linear_probe,
    mean_interval,
    pool,
    student_t_quantile,
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


def test_pool_at_a_position_takes_that_state_and_refuses_one_outside():
    h = torch.arange(24.0).view(2, 3, 4)  # (B, T, C)
    kp = torch.ones(2, 3, dtype=torch.bool)
    assert pool(h, kp, 1).tolist() == [[4.0, 5.0, 6.0, 7.0], [16.0, 17.0, 18.0, 19.0]]
    for bad in (3, -1):
        with pytest.raises(ValueError, match="position"):
            pool(h, kp, bad)


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


def test_frozen_features_at_a_position_match_the_hidden_state_there():
    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    ids = torch.randint(0, 12, (5, 8))
    kp = torch.ones(5, 8, dtype=torch.bool)
    feats = frozen_features(model, ids, kp, pooling=3, batch_size=2)  # (5, C)
    torch.testing.assert_close(feats, model.hidden(ids)[:, 3], rtol=0, atol=1e-6)
    # a causal read at position 3 cannot see position 4; a bidirectional one can
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 12
    assert torch.equal(frozen_features(model, changed, kp, pooling=3), feats)
    assert not torch.allclose(frozen_features(model, changed, kp, pooling=3, bidirectional=True),
                              frozen_features(model, ids, kp, pooling=3, bidirectional=True))


def test_example_losses_are_each_rows_negative_log_probability():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), torch.tensor([0, 4, 2, 2, 1, 3])
    by_hand = -torch.log_softmax(logits, -1)[torch.arange(6), labels]  # (6,)
    torch.testing.assert_close(example_losses(logits, labels), by_hand)
    assert example_losses(logits, labels).mean().item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-6)


@pytest.mark.parametrize(("p", "df", "table"), [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 9, 2.2622),
    (0.975, 30, 2.0423), (0.95, 10, 1.8125), (0.995, 3, 5.8409), (0.999, 1, 318.3088),
])
def test_student_t_quantile_matches_the_table(p, df, table):
    # tabulated quantiles of Student's t (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
    assert student_t_quantile(p, df) == pytest.approx(table, abs=1e-4 * max(1.0, table / 10))


def test_student_t_quantile_tends_to_the_normal_and_refuses_bad_arguments():
    assert student_t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-4)
    for p, df in ((0.5, 3), (1.0, 3), (0.975, 0)):
        with pytest.raises(ValueError):
            student_t_quantile(p, df)


def test_mean_interval_hand_computed():
    mean, half = mean_interval([1.0, 2.0, 3.0])  # s = 1, n = 3, t_{0.975, 2} = 4.3027
    assert mean == 2.0 and half == pytest.approx(4.3027 / 3**0.5, abs=1e-4)
    mean, half = mean_interval([0.1, 0.3], level=0.9)  # s = 0.1414, t_{0.95, 1} = 6.3138
    assert mean == pytest.approx(0.2) and half == pytest.approx(6.3138 * 0.1, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])


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

"""The foundation's objectives: clm_loss against PyTorch, BERT masking statistics."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.data import CharTokenizer
from lmlab.objectives import IGNORE_INDEX, clm_loss, mask_tokens, masked_lm_loss

TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .\n")


def test_clm_loss_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 11)
    targets = torch.randint(0, 11, (4, 7))
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    torch.testing.assert_close(clm_loss(logits, targets), ref, rtol=0, atol=1e-6)


def test_clm_loss_hand_computed():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert clm_loss(logits, torch.tensor([[1]])).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_clm_loss_survives_huge_logits():
    logits = torch.tensor([[[1e4, 0.0, -1e4]]])
    assert clm_loss(logits, torch.tensor([[0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(clm_loss(logits, torch.tensor([[2]])).item())


def test_clm_loss_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        clm_loss(torch.randn(4, 11), torch.zeros(4, dtype=torch.long))


def test_masking_rates_over_many_draws():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TOK.n_chars, (256, 256), generator=g)  # 65,536 positions
    inputs, labels = mask_tokens(ids, TOK, rate=0.15, generator=g)
    selected = labels != IGNORE_INDEX
    n = selected.sum().item()
    # binomial std of the selection rate ~ 0.0014: 0.01 is > 7 sigma
    assert abs(n / ids.numel() - 0.15) < 0.01
    as_mask = (inputs == TOK.mask_id) & selected
    unchanged = (inputs == ids) & selected
    random_tok = selected & ~as_mask & ~unchanged
    # of ~9,800 selected: std of each share < 0.005; a random token equals the original 1/29 times
    assert abs(as_mask.sum().item() / n - 0.8) < 0.02
    assert abs(unchanged.sum().item() / n - (0.1 + 0.1 / TOK.n_chars)) < 0.02
    assert abs(random_tok.sum().item() / n - 0.1 * (1 - 1 / TOK.n_chars)) < 0.02
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else is touched
    assert not (inputs[random_tok] >= TOK.n_chars).any()  # random tokens are never specials


def test_special_and_padding_tokens_never_selected():
    g = torch.Generator().manual_seed(1)
    ids = torch.full((64, 64), TOK.pad_id)
    ids[:, 0] = TOK.cls_id
    ids[:, 1::2] = torch.randint(0, TOK.n_chars, (64, 32), generator=g)
    _, labels = mask_tokens(ids, TOK, rate=0.5, generator=g)
    special = TOK.is_special(ids)
    assert (labels[special] == IGNORE_INDEX).all()
    assert (labels[~special] != IGNORE_INDEX).any()


def test_only_selected_positions_contribute_to_mlm_loss():
    torch.manual_seed(0)
    ids = torch.randint(0, TOK.n_chars, (4, 32))
    _, labels = mask_tokens(ids, TOK, generator=torch.Generator().manual_seed(0))
    logits = torch.randn(4, 32, TOK.vocab_size)
    changed = logits.clone()
    changed[labels == IGNORE_INDEX] += 5 * torch.randn_like(changed[labels == IGNORE_INDEX])
    torch.testing.assert_close(masked_lm_loss(logits, labels), masked_lm_loss(changed, labels))


def test_rate_is_validated():
    with pytest.raises(ValueError, match="rate=1.5"):
        mask_tokens(torch.zeros(2, 2, dtype=torch.long), TOK, rate=1.5)

"""Soft and hard prompts: length 0 is the base model, a soft prompt started at a hard prompt's
embeddings computes what the hard prompt computes, and only the prompt trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.model import Transformer
from lmlab.prompts import (
    IGNORE,
    SoftPrompt,
    hard_prompt_vectors,
    init_ids_for,
    prompt_loss,
    prompted_logits,
)

CONFIG = ModelConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, d_model=16)


def model(seed=0, **changes):
    torch.manual_seed(seed)
    return Transformer(CONFIG.replace(**changes)).eval()


def ids(t=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG.vocab_size, (3, t), generator=g)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_no_prompt_and_an_empty_prompt_are_the_base_model(pos):
    m, x = model(pos=pos), ids()
    with torch.no_grad():
        assert torch.equal(prompted_logits(m, x), m(x))
        assert torch.equal(prompted_logits(m, x, torch.zeros(0, CONFIG.d_model)), m(x))


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_a_prompt_of_embeddings_equals_the_hard_prompt_written_as_text(pos):
    m, x = model(pos=pos), ids()
    hard = torch.tensor([3, 5, 7, 2])
    with torch.no_grad():
        as_text = m(torch.cat([hard.expand(3, -1), x], dim=1))[:, 4:]  # (3, 10, V)
        as_vectors = prompted_logits(m, x, hard_prompt_vectors(m, hard))
        soft = SoftPrompt(m, hard)
        # the same numbers through the same operations; fp32 rounding of a different layout at
        # most (the model is 2 layers deep): 1e-5 relative
        torch.testing.assert_close(as_vectors, as_text, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prompted_logits(m, x, soft()), as_text, rtol=1e-5, atol=1e-5)


def test_prompt_loss_scores_only_the_targets_that_are_not_ignored():
    m, x = model(), ids()
    y = torch.roll(x, -1, dims=1)
    y[:, -1] = IGNORE
    y[0, 5:] = IGNORE
    with torch.no_grad():
        logits = m(x)  # (3, 10, V)
        keep = y != IGNORE
        by_hand = F.cross_entropy(logits[keep], y[keep])
        torch.testing.assert_close(prompt_loss(m, x, y), by_hand)


def test_only_the_soft_prompt_trains_and_it_lowers_the_loss():
    m, x = model(), ids()
    for p in m.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = torch.roll(x, -1, dims=1)
    y[:, -1] = IGNORE
    soft = SoftPrompt(m, init_ids_for(torch.tensor([1, 2]), 4))
    start = soft().detach().clone()
    opt = torch.optim.Adam(soft.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        loss = prompt_loss(m, x, y, soft())
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not torch.equal(soft(), start)
    assert losses[-1] < losses[0]


def test_init_ids_repeat_the_hard_prompt_on_the_left():
    hard = torch.tensor([4, 5, 6])
    assert init_ids_for(hard, 3).tolist() == [4, 5, 6]
    assert init_ids_for(hard, 2).tolist() == [5, 6]
    assert init_ids_for(hard, 5).tolist() == [5, 6, 4, 5, 6]
    assert init_ids_for(hard, 0).tolist() == []
    with pytest.raises(ValueError, match="k=-1"):
        init_ids_for(hard, -1)


def test_a_prompt_that_does_not_fit_the_context_is_named():
    m = model()
    with pytest.raises(ValueError, match="longer than block_size=16"):
        prompted_logits(m, ids(t=10), torch.zeros(7, CONFIG.d_model))
    with pytest.raises(ValueError, match="expected \\(k, 16\\)"):
        prompted_logits(m, ids(), torch.zeros(2, 8))

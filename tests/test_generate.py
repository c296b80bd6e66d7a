"""Generation: the KV cache changes the cost, never the tokens."""

from __future__ import annotations

import re

import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab.generate import generate, generate_ids, timed_generation


def _model(pos: str, block_size: int = 16) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=2, d_model=16,
                         pos=pos)
    return Transformer(config).eval()


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "none"])
def test_cache_gives_identical_tokens_greedy_and_sampled(pos):
    model = _model(pos)
    idx = torch.tensor([[1, 2, 3, 4]])
    for temperature in (0.0, 1.0):
        runs = []
        for use_cache in (True, False):
            g = torch.Generator().manual_seed(3)
            runs.append(generate_ids(model, idx, 20, temperature, None, g, use_cache))
        assert runs[0].shape == (1, 24)
        assert torch.equal(runs[0], runs[1])


def test_cache_logits_match_full_forward():
    model = _model("rope")
    idx = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(0))
    full = model(idx)  # (B, T, V)
    caches = [{} for _ in range(2)]
    parts = [model(idx[:, :5], caches=caches)]
    parts += [model(idx[:, t : t + 1], caches=caches) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_timed_generation_counts_positions():
    """T0 = 4 prompt tokens, N = 6 new ones, block 16: with the cache the model runs on
    4 + 1 * 5 = 9 positions; without, on 4 + 5 + ... + 9 = 39."""
    model = _model("learned")
    idx = torch.tensor([[1, 2, 3, 4]])
    cached = timed_generation(model, idx, 6, use_cache=True, repeats=2)
    full = timed_generation(model, idx, 6, use_cache=False, repeats=2)
    assert cached["positions"] == 9 and full["positions"] == sum(range(4, 10))
    assert torch.equal(cached["ids"], full["ids"])
    assert cached["seconds"] > 0 and full["seconds"] > 0
    with pytest.raises(ValueError, match="repeats"):
        timed_generation(model, idx, 2, use_cache=True, repeats=0)


def test_generation_past_block_size_stays_identical():
    model = _model("learned", block_size=8)
    idx = torch.tensor([[1, 2, 3]])
    a = generate_ids(model, idx, 12, 0.0, use_cache=True)
    b = generate_ids(model, idx, 12, 0.0, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(temperature=float("nan")), "temperature=nan"),
        (dict(temperature=float("inf")), "temperature=inf"),
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(top_k=2.5), "top_k=2.5"),
        (dict(top_k=0), "top_k=0"),
        (dict(max_new_tokens=-3), "max_new_tokens=-3"),
        (dict(max_new_tokens=2.0), "max_new_tokens=2.0"),
    ],
)
def test_bad_sampling_settings_are_clear_errors(kwargs, field):
    """Before the fix: torch's sampling error for nan, a TypeError for top_k=2.5, and the bare
    prompt for max_new_tokens=-3."""
    args = dict(max_new_tokens=5, temperature=1.0, top_k=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{re.escape(field)} is invalid"):
        generate_ids(_model("learned"), torch.tensor([[1, 2]]), args["max_new_tokens"],
                     args["temperature"], args["top_k"], torch.Generator().manual_seed(0))


def test_generate_returns_prompt_plus_text(tiny_corpus):
    """The text API: the prompt, then exactly n characters; same seed, same text; the KV cache
    changes nothing at temperature 0."""
    tok = tiny_corpus.tokenizer
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2,
                                    n_head=2, d_model=32))
    out = generate(model, tok, "to be", 20, seed=0)
    assert out.startswith("to be") and len(out) == 25
    assert out == generate(model, tok, "to be", 20, seed=0)
    cached = generate(model, tok, "to be", 30, temperature=0)
    assert cached == generate(model, tok, "to be", 30, temperature=0, use_cache=False)

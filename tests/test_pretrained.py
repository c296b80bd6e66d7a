"""The pretrained base model of chapters 6 and 7: trained once, then read back from the cache."""

import pytest
import torch

from lmlab.pretrained import BASE_SIZES, base_configs, pretrained_base


def test_every_profile_has_a_causal_base_config(tiny_corpus):
    for profile in BASE_SIZES:
        model_config, train_config = base_configs(tiny_corpus, profile)
        assert model_config.causal and train_config.objective == "clm"
        assert model_config.vocab_size == tiny_corpus.tokenizer.vocab_size


def test_bad_profile_is_named(tiny_corpus):
    with pytest.raises(ValueError, match="profile='laptop'"):
        base_configs(tiny_corpus, "laptop")


def test_second_call_reads_the_same_weights_from_the_cache(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(BASE_SIZES, "ci", {
        "model": dict(n_layer=1, n_head=2, d_model=16, block_size=16),
        "train": dict(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=2,
                      eval_batches=1),
    })
    first, run = pretrained_base("ci", corpus=tiny_corpus)
    with torch.no_grad():  # a caller fine-tuning its copy must not change the cached weights
        for p in first.parameters():
            p.add_(1.0)
    second, again = pretrained_base("ci", corpus=tiny_corpus)
    assert not run.cached and again.cached
    assert not second.training
    reference = again.load_model()
    for a, b in zip(second.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(next(first.parameters()), next(second.parameters()))

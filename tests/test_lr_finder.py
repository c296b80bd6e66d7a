"""The learning-rate range test: the ramp, the smoothing, the suggestion, a real tiny run."""

from __future__ import annotations

import json
import math

import pytest

from lmlab import ModelConfig, TrainConfig
from lmlab.lr_finder import lr_range_test, range_lrs, smooth_losses, suggest_lr


def test_range_is_geometric():
    lrs = range_lrs(1e-4, 1.0, 5)
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)
    with pytest.raises(ValueError, match="lr_min < lr_max"):
        range_lrs(1.0, 0.1, 5)


def test_smoothing_is_bias_corrected_ema():
    # beta = 0.5: a = 0.5, 1.25, 1.625; corrections 1 - 0.5^i = 0.5, 0.75, 0.875
    assert smooth_losses([1.0, 2.0, 2.0], 0.5) == pytest.approx([1.0, 5 / 3, 1.625 / 0.875])
    assert smooth_losses([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])  # no bias to 0


def test_suggestions_on_a_synthetic_curve():
    lrs = range_lrs(1e-5, 1.0, 51)
    # flat, then a fall centred at lr = 1e-3, a minimum near 1e-1, then a blow-up
    loss = [3 - math.tanh(2 * (math.log10(lr) + 3)) + 50 * max(0.0, math.log10(lr) + 1) ** 2
            for lr in lrs]
    assert suggest_lr(lrs, loss, "steepest") == pytest.approx(1e-3, rel=0.3)
    best = lrs[loss.index(min(loss))]
    assert suggest_lr(lrs, loss, "min_over_10") == pytest.approx(best / 10)
    with pytest.raises(ValueError, match="rule"):
        suggest_lr(lrs, loss, "valley")


def test_range_test_on_a_tiny_transformer(tmp_path, monkeypatch, tiny_corpus):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    corpus = tiny_corpus
    mc = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                     d_model=16)
    tc = TrainConfig(batch_size=8, optimizer="adamw", grad_clip=None, progress=False)
    result = lr_range_test(mc, tc, corpus, lr_min=1e-4, lr_max=10.0, steps=60)
    # At lr = 10 Adam cannot train: the test stops early once the loss is 4x its minimum.
    assert len(result.losses) < 60
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    # The loss fell from its start (ln 13 = 2.56 nats for 13 characters) before it blew up.
    assert min(result.smoothed) < result.losses[0] - 0.5
    assert 1e-4 < result.suggestion < result.min_loss_lr
    again = lr_range_test(mc, tc, corpus, lr_min=1e-4, lr_max=10.0, steps=60)
    assert again.cached and again.losses == result.losses


def test_range_test_is_kept_in_the_experiment_cache(tmp_path, monkeypatch, tiny_corpus):
    """One cache for runs and range tests: the record sits under runs/ (written atomically, no
    temporary file left), and a damaged one is recomputed with a warning, never returned."""
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc = ModelConfig(vocab_size=tiny_corpus.tokenizer.vocab_size, block_size=16, n_layer=1,
                     n_head=2, d_model=16)
    tc = TrainConfig(batch_size=8, progress=False)
    first = lr_range_test(mc, tc, tiny_corpus, lr_min=1e-4, lr_max=1.0, steps=8)
    (record,) = (tmp_path / "runs").glob("*/record.json")
    assert json.loads(record.read_text())["losses"] == first.losses
    assert [p.name for p in record.parent.iterdir()] == ["record.json"]
    assert not (tmp_path / "lr_range").exists()  # no second cache
    record.write_text('{"lrs": [0.1, ')  # cut short, as by a crash mid-write elsewhere
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = lr_range_test(mc, tc, tiny_corpus, lr_min=1e-4, lr_max=1.0, steps=8)
    assert not again.cached and again.losses == first.losses
    assert lr_range_test(mc, tc, tiny_corpus, lr_min=1e-4, lr_max=1.0, steps=8).cached

"""The quickstart explorer trains (or reads back) a run per learning rate and redraws."""

import pytest

from lmlab import ModelConfig, TrainConfig
from lmlab.data import char_corpus
from lmlab.widgets.quickstart import learning_rate_explorer


def test_changing_learning_rate_changes_the_curve(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    corpus = char_corpus()
    mc = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                     d_model=16)
    # min_lr = lr / 10 of the default: picking a smaller lr must rescale the floor, not fail
    tc = TrainConfig(steps=8, batch_size=4, lr=3e-3, min_lr=3e-3 / 10, warmup_steps=1,
                     eval_every=4, eval_batches=1, progress=False, device="cpu")
    e = learning_rate_explorer(mc, tc, corpus, learning_rates=(1e-3, 1e-2), default=1e-3)
    assert e.error is None
    lines = e.figure.axes[0].lines
    assert len(lines) == 2  # reference run: val + train
    png = e.view.image.value
    e.controls["lr"].value = 1e-2
    assert e.error is None
    assert e.view.image.value != png
    val_lines = [ln for ln in e.figure.axes[0].lines if ln.get_label().startswith("lr=")]
    assert len(val_lines) == 2
    assert list(val_lines[0].get_ydata()) != list(val_lines[1].get_ydata())
    low = learning_rate_explorer(mc, tc, corpus, learning_rates=(3e-4, 3e-3), default=3e-3)
    low.set(lr=3e-4)
    assert low.error is None, low.error
    with pytest.raises(ValueError, match="default"):
        learning_rate_explorer(mc, tc, corpus, learning_rates=(1e-3,), default=5e-3)

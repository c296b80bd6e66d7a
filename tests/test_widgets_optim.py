"""The optimizer explorer redraws its figure when a control changes."""

from __future__ import annotations

import pytest

from lmlab import ModelConfig, TrainConfig
from lmlab.config import OPTIMIZERS, SCHEDULES
from lmlab.widgets import STATIC_BOOK_ENV
from lmlab.widgets.optim import optimizer_explorer


def left_lines(explorer) -> list:
    return [line.get_ydata().tolist() for line in explorer.figure.axes[0].get_lines()]


@pytest.fixture
def tiny_model(tiny_corpus) -> ModelConfig:
    """A one-block model over the tiny corpus: an explorer setting trains in well under a second."""
    return ModelConfig(vocab_size=tiny_corpus.tokenizer.vocab_size, block_size=16, n_layer=1,
                       n_head=2, d_model=16)


def test_explorer_redraws_on_lr_and_schedule(tmp_path, monkeypatch, tiny_corpus, tiny_model):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    corpus, mc = tiny_corpus, tiny_model
    tc = TrainConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=10,
                     eval_batches=2, progress=False)
    explorer = optimizer_explorer(mc, tc, corpus)
    assert explorer.error is None
    assert "lmlab-explorer" in explorer.widget._dom_classes
    png, lines = explorer.view.image.value, left_lines(explorer)
    explorer.set(lr=1e-2)
    assert explorer.error is None
    assert explorer.view.image.value != png
    assert left_lines(explorer) != lines
    lr_line = explorer.figure.axes[1].get_lines()[0].get_ydata()
    assert max(lr_line) == pytest.approx(1e-2)
    explorer.set(schedule="constant", warmup=0)
    assert explorer.figure.axes[1].get_lines()[0].get_ydata().tolist() == [1e-2] * 20


def test_explorer_rejects_defaults_outside_its_options(tiny_corpus):
    mc = ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, d_model=8)
    with pytest.raises(ValueError, match="lr"):
        optimizer_explorer(mc, TrainConfig(lr=2e-3), tiny_corpus)


def test_book_moves_optimizer_schedule_and_the_neighbouring_lrs_alone(tmp_path, monkeypatch,
                                                                      tiny_corpus, tiny_model):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(STATIC_BOOK_ENV, "1")
    corpus, mc = tiny_corpus, tiny_model
    tc = TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=3,
                     eval_batches=1, progress=False)
    explorer = optimizer_explorer(mc, tc, corpus)
    settings, _ = explorer.book_settings()
    default = settings[0]
    moved = {(name, s[name]) for s in settings[1:] for name in s if s[name] != default[name]}
    assert all(sum(s[n] != default[n] for n in s) == 1 for s in settings[1:])  # one at a time
    assert moved == ({("optimizer", o) for o in OPTIMIZERS if o != "adamw"}
                     | {("schedule", k) for k in SCHEDULES if k != tc.schedule}
                     | {("lr", 3e-4), ("lr", 3e-3)})
    assert explorer.book_errors == {} and explorer.error is None
    assert explorer.controls["warmup"].disabled and explorer.controls["grad_clip"].disabled
    assert explorer.previews == 0  # the runs the book trains draw no live previews

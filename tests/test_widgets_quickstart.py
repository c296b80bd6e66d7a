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


def test_figure_is_redrawn_while_the_run_trains(tmp_path, monkeypatch):
    """Progressive drawing: an uncached setting's curve appears and grows during training, not
    only once the run is over (every PNG pushed to the page is recorded with the number of
    validation points of the run being trained that it shows)."""
    import lmlab.widgets as widgets

    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    # a preview at every step (raising=False: the test also runs, and fails, without previews)
    monkeypatch.setattr(widgets, "PREVIEW_INTERVAL_S", 0.0, raising=False)
    monkeypatch.setattr(widgets, "PREVIEW_COST_RATIO", 0.0, raising=False)
    corpus = char_corpus()
    mc = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                     d_model=16)
    tc = TrainConfig(steps=24, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=4,
                     eval_batches=1, progress=False, device="cpu")
    e = learning_rate_explorer(mc, tc, corpus, learning_rates=(1e-3, 1e-2), default=1e-3)
    shown = []  # validation points of the lr=0.01 run in each PNG pushed

    def on_png(_change):
        figure = getattr(e.view, "shown", e.figure)  # the figure of the PNG on the page
        lines = [ln for ln in figure.axes[0].lines if ln.get_label() == "lr=0.01"]
        shown.append(len(lines[0].get_xdata()) if lines else None)

    e.view.image.observe(on_png, names="value")
    before = getattr(e, "previews", 0)
    e.controls["lr"].value = 1e-2
    assert e.error is None
    evals = tc.steps // tc.eval_every
    assert shown[-1] == evals  # the final figure: the whole run
    partial = shown[:-1]  # the figures shown while it trained (an unchanged PNG is not sent)
    assert len(partial) >= evals, shown  # a new figure at least at each evaluation
    assert all(n is not None for n in partial)  # the curve was up from step 1 ...
    assert partial == sorted(partial) and set(range(evals)) <= set(partial)  # ... and grew
    assert e.previews - before == tc.steps  # a preview offered at every step, all drawn
    assert len(e.figure.axes) == 1  # the final figure holds no preview's axes
    # a cached setting trains nothing: one PNG, no preview
    e.controls["lr"].value = 1e-3
    n_previews, n_shown = e.previews, len(shown)
    e.controls["lr"].value = 1e-2
    assert e.previews == n_previews and len(shown) == n_shown + 1

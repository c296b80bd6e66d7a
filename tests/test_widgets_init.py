"""The initialization explorer: changing a control redraws the figure with different data."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lmlab import TrainConfig
from lmlab.widgets import STATIC_BOOK_ENV
from lmlab.widgets.init import BOOK_SCHEMES, WIDGET_SCHEMES, init_explorer

TINY = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=3, eval_batches=1,
                   progress=False)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))


def _lines(explorer):
    stats_ax, loss_ax = explorer.figure.axes[:2]
    return ([np.asarray(line.get_ydata(), dtype=float) for line in stats_ax.lines],
            [np.asarray(line.get_ydata(), dtype=float) for line in loss_ax.lines])


def test_changing_controls_redraws_with_new_data():
    n_figures = len(plt.get_fignums())
    e = init_explorer(TINY, depth=4, width=32, depths=(4, 8), widths=(32, 64), block_size=16,
                      probe_batch=4)
    assert e.error is None, e.error
    assert "lmlab-explorer" in e.widget._dom_classes
    png = e.view.image.value
    stats, losses = _lines(e)
    assert len(stats[0]) == 4  # one point per layer
    assert len(losses[0]) == 2  # validation loss at steps 3 and 6

    e.set(scheme="N(0, 1)")
    assert e.error is None, e.error
    assert e.view.image.value != png
    stats2, losses2 = _lines(e)
    assert not np.allclose(stats2[0], stats[0])  # activation std per layer changed
    assert not np.allclose(losses2[0], losses[0])  # and so did the loss curve

    e.set(depth=8, nonlinearity="relu")
    stats3, _ = _lines(e)
    assert e.error is None and len(stats3[0]) == 8
    assert len(plt.get_fignums()) == n_figures


def test_zero_init_draws_without_error_and_bad_defaults_fail():
    e = init_explorer(TINY, scheme="zeros", depth=4, width=32, depths=(4,), widths=(32,),
                      block_size=16, probe_batch=4)
    assert e.error is None, e.error
    assert set(WIDGET_SCHEMES) >= {"Glorot normal", "He normal", "N(0, 1)", "zeros"}
    with pytest.raises(ValueError, match="scheme"):
        init_explorer(TINY, scheme="xavier")
    with pytest.raises(ValueError, match="depth"):
        init_explorer(TINY, depth=5)


def test_book_precomputes_the_book_schemes_at_the_default_shape(monkeypatch):
    monkeypatch.setenv(STATIC_BOOK_ENV, "1")
    e = init_explorer(TINY, scheme="He uniform", depth=4, width=32, depths=(4, 8),
                      widths=(32, 64), block_size=16, probe_batch=4)
    settings, note = e.book_settings()
    # each scheme trains a model: only the book's few, plus the default, at the default shape
    assert [s["scheme"] for s in settings] == ["He uniform", *BOOK_SCHEMES]
    assert {(s["depth"], s["width"], s["nonlinearity"]) for s in settings} == {(4, 32, "tanh")}
    assert e.book_errors == {} and e.error is None
    assert all(e.controls[n].disabled for n in ("depth", "width", "nonlinearity"))
    assert "<i>scheme</i> in {Glorot normal, He normal, He uniform, N(0, 1), N(0, 0.02)}" in note

"""Widget building blocks: one persistent figure, redrawn in place on control changes."""

import ipywidgets as W
import matplotlib.pyplot as plt
import pytest

from lmlab.widgets import Explorer, FigureView, LiveLossPlot


def _draw(fig, progress, slope):
    progress(0.5, "drawing")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, slope])


def test_explorer_redraws_on_change_without_new_figures():
    n_figures = len(plt.get_fignums())
    e = Explorer({"slope": W.FloatSlider(value=1.0, min=0, max=3)}, _draw, title="t")
    assert "lmlab-explorer" in e.widget._dom_classes
    assert "lmlab-figure" in e.view.image._dom_classes
    png = e.view.image.value
    e.controls["slope"].value = 2.0  # as a learner would: through the widget
    assert e.view.image.value != png
    line = e.figure.axes[0].lines[0]
    assert list(line.get_ydata()) == [0, 2.0]
    assert len(e.figure.axes) == 1  # cleared, not stacked
    assert e.view.renders == 2
    assert len(plt.get_fignums()) == n_figures  # nothing registered with pyplot


def test_explorer_shows_errors_and_keeps_last_figure():
    def broken(fig, progress, x):
        if x == "bad":
            raise ValueError("no good")
        fig.add_subplot().plot([1, 2])

    e = Explorer({"x": W.Dropdown(options=["ok", "bad"])}, broken)
    png = e.view.image.value
    e.set(x="bad")
    assert isinstance(e.error, ValueError) and "no good" in e.status.value
    assert e.view.image.value == png
    with pytest.raises(ValueError, match="unknown controls"):
        e.set(y=1)


def test_live_loss_plot_redraws_at_evals():
    live = LiveLossPlot(every=5)
    for step in range(1, 11):
        row = {"step": step, "train_loss": 4.0 - 0.1 * step}
        if step == 10:
            row["val_loss"] = 3.2
        live(row)
    assert live.view.renders == 2  # steps 5 and 10
    assert FigureView().png()[:4] == b"\x89PNG"

"""Widget building blocks: one persistent figure, redrawn in place on control changes."""

from pathlib import Path

import ipywidgets as W
import matplotlib.pyplot as plt
import pytest

from lmlab.widgets import STATIC_BOOK_ENV, STATIC_NOTE, Explorer, FigureView, History, LiveLossPlot


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


def _slope_explorer(history):
    def draw(fig, progress, slope):
        ax = fig.add_subplot()
        history.record(slope, f"slope {slope:g}", [0.0, slope])
        history.draw_behind(ax, slope, lambda ax, ys, label, style: ax.plot([0, 1], ys,
                                                                             label=label, **style))
        ax.plot([0, 1], [0, slope], label="current")
        history.fix_limits(ax, "main", ymax=4.5)

    return Explorer({"slope": W.Dropdown(options=[1.0, 2.0, 3.0, 4.0, 5.0], value=1.0)}, draw,
                    history=history)


def _labels(explorer):
    return [ln.get_label() for ln in explorer.figure.axes[0].lines]


def test_history_keeps_reference_and_last_settings_on_fixed_axes():
    e = _slope_explorer(History(keep=2))
    assert _labels(e) == ["current"]  # the defaults: nothing to draw behind yet
    for slope in (2.0, 3.0, 4.0):
        e.set(slope=slope)
    limits = (e.figure.axes[0].get_xlim(), e.figure.axes[0].get_ylim())
    assert limits[1] == pytest.approx((-0.2, 4.2))  # grown to take in slope 4's line (5% margins)
    # reference (the defaults) first, then the last two earlier settings, oldest first
    assert _labels(e) == ["slope 1 (reference)", "slope 2 (earlier)", "slope 3 (earlier)",
                          "current"]
    ref = e.figure.axes[0].lines[0]
    assert list(ref.get_ydata()) == [0.0, 1.0] and ref.get_linestyle() == "--"
    assert [ln.get_alpha() for ln in e.figure.axes[0].lines[1:3]] == [0.55, 0.75]  # fading
    e.set(slope=3.0)  # back to a setting already tried: drawn once, as the current one
    assert _labels(e) == ["slope 1 (reference)", "slope 4 (earlier)", "current"]
    e.set(slope=1.0)  # the reference itself: not drawn twice
    assert _labels(e) == ["slope 4 (earlier)", "slope 3 (earlier)", "current"]
    # the limits never shrink back: slope 1 alone would autoscale to y <= 1.05
    assert (e.figure.axes[0].get_xlim(), e.figure.axes[0].get_ylim()) == limits
    e.set(slope=5.0)  # would autoscale to 5.25: grows only up to the cap, the line runs off the top
    assert e.figure.axes[0].get_ylim() == pytest.approx((-0.25, 4.5))


def test_history_drops_a_failed_draw():
    history = History(keep=3)

    def draw(fig, progress, x):
        history.record(x, x, x)
        if x == "bad":
            raise ValueError("no good")
        fig.add_subplot()

    e = Explorer({"x": W.Dropdown(options=["ok", "bad", "fine"])}, draw, history=history)
    e.set(x="bad")
    e.set(x="fine")
    assert history.reference.key == "ok" and [t.key for t in history.recent] == ["fine"]
    with pytest.raises(ValueError, match="keep"):
        History(keep=-1)


def test_static_note_only_in_the_book_build(monkeypatch):
    monkeypatch.delenv(STATIC_BOOK_ENV, raising=False)
    inside_lab = Explorer({"slope": W.FloatSlider(value=1.0)}, _draw)
    assert "Showing the default settings" not in inside_lab.widget.children[-1].value
    monkeypatch.setenv(STATIC_BOOK_ENV, "1")
    in_book = Explorer({"slope": W.FloatSlider(value=1.0)}, _draw)
    assert STATIC_NOTE in in_book.widget.children[-1].value


def test_book_build_sets_the_static_book_variable():
    source = (Path(__file__).resolve().parents[1] / "book" / "build.py").read_text("utf-8")
    assert f'STATIC_BOOK_ENV = "{STATIC_BOOK_ENV}"' in source
    assert "os.environ[STATIC_BOOK_ENV] = \"1\"" in source


def test_previews_are_throttled_and_a_failed_setting_restores_the_last_figure(monkeypatch):
    import lmlab.widgets as widgets

    clock = [100.0]
    monkeypatch.setattr(widgets.time, "perf_counter", lambda: clock[0])

    def draw(fig, progress, x):
        for step in range(5):  # five steps 0.4 s apart, a preview offered at each
            progress(step / 5, f"step {step}",
                     preview=lambda f, s=step: f.add_subplot().plot([0, s]))
            clock[0] += 0.4
        if x == "bad":
            raise ValueError("diverged")
        fig.add_subplot().plot([1, 2])

    e = Explorer({"x": W.Dropdown(options=["ok", "bad"])}, draw)
    # steps at 0, 0.4, ..., 1.6 s: the first preview at once, the next 1 s later at the earliest
    # (PREVIEW_INTERVAL_S), so at 0 and 1.2 s
    assert widgets.PREVIEW_INTERVAL_S == 1.0 and e.previews == 2
    png = e.view.image.value
    e.set(x="bad")
    assert e.previews == 4 and isinstance(e.error, ValueError)
    assert e.view.image.value == png  # not the last preview of the failed setting

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


# ------------------------------------------------------------------------------ the static book
def _leaf(explorer, setting: dict):
    """The widget the page shows for ``setting``: follow each Stack as its linked control would
    set it in the browser (the control's ``index``, or an IntSlider's ``value``)."""
    links = {id(link.target[0]): link.source for link in explorer._links}
    node = explorer.widget.children[2]
    while isinstance(node, W.Stack):
        control, trait = links[id(node)]
        name = next(n for n, c in explorer.controls.items() if c is control)
        assert trait in ("index", "value")
        if trait == "index":
            node = node.children[list(control._options_values).index(setting[name])]
        else:
            node = node.children[setting[name]]
    return node


def _labelled_draw(fig, progress, colour, n, text):
    """A figure that says which setting it shows, on axes of its own (no history)."""
    ax = fig.add_subplot()
    ax.bar([0], [n], color=colour)
    ax.set_title(f"{colour} {n} {text}")
    ax.set_ylim(0, 5)


def _book_explorer(monkeypatch, **kwargs):
    monkeypatch.setenv(STATIC_BOOK_ENV, "1")
    controls = {"colour": W.Dropdown(options=["red", "green", "blue"], value="green"),
                "n": W.IntSlider(value=2, min=1, max=4, description="n"),
                "text": W.Text(value="hi", description="text")}
    return Explorer(controls, _labelled_draw, **kwargs)


def _png_of(setting: dict) -> bytes:
    view = FigureView()
    view.redraw(lambda fig: _labelled_draw(fig, None, **setting))
    return view.image.value


def test_book_page_switches_to_the_figure_of_each_precomputed_setting(monkeypatch):
    e = _book_explorer(monkeypatch, book_mode="product")
    settings, note = e.book_settings()
    assert len(settings) == 3 * 4 and settings[0] == {"colour": "green", "n": 2, "text": "hi"}
    for setting in settings:  # the figure the links select is the one drawn for that setting
        leaf = _leaf(e, setting)
        assert isinstance(leaf, W.Image) and "lmlab-figure" in leaf._dom_classes
        assert leaf.value == _png_of(setting), setting
    assert _leaf(e, settings[0]) is e.view.image  # the default figure is the explorer's own
    assert e.controls["text"].disabled and not e.controls["colour"].disabled
    assert "every combination of <i>colour</i>, <i>n</i>, 12 figures" in note
    assert "<i>text</i> stays at the default" in note and "make lab" in note
    assert note in e.widget.children[-1].value


def test_book_one_at_a_time_shows_a_notice_for_the_other_combinations(monkeypatch):
    e = _book_explorer(monkeypatch)  # 12 settings: within BOOK_PRODUCT_LIMIT, so the product
    assert len(e.book_settings()[0]) == 12
    e = _book_explorer(monkeypatch, book_mode="one at a time",
                       book_vary={"colour": None, "n": [1, 2, 3]})
    settings, note = e.book_settings()
    assert [(s["colour"], s["n"]) for s in settings] == [
        ("green", 2), ("red", 2), ("blue", 2), ("green", 1), ("green", 3)]
    for setting in settings:
        assert _leaf(e, setting).value == _png_of(setting)
    for other in ({"colour": "red", "n": 1}, {"colour": "green", "n": 4}):
        leaf = _leaf(e, {**settings[0], **other})
        assert isinstance(leaf, W.HTML) and "not precomputed" in leaf.value
    assert "each of <i>colour</i>, <i>n</i> in {1, 2, 3} moved alone, 5 figures" in note
    assert "the other 7 settings show a notice" in note
    _, note = _book_explorer(monkeypatch, book_vary={"colour": ["red"]}).book_settings()
    assert note.startswith("The figures on this page were precomputed when the book was built: "
                           "every value of <i>colour</i> in {red, green}, 2 figures; the other "
                           "setting shows a notice; <i>n</i>, <i>text</i> stay at the default.")


def test_book_figures_show_the_reference_behind_them_and_share_axes(monkeypatch):
    monkeypatch.setenv(STATIC_BOOK_ENV, "1")
    history = History(keep=3)
    behind_at_png: list[tuple[float, list[str]]] = []

    def draw(fig, progress, slope):
        ax = fig.add_subplot()
        history.record(slope, f"slope {slope:g}", slope)
        behind_at_png.append((slope, [label for _, _, label in history.behind(slope)]))
        ax.plot([0, 1], [0, slope])
        history.fix_limits(ax, "main")

    e = Explorer({"slope": W.Dropdown(options=[1.0, 2.0, 3.0], value=2.0)}, draw,
                 history=history)
    # each figure: the reference (the defaults) behind it, never the settings drawn before it
    assert sorted({(s, tuple(labels)) for s, labels in behind_at_png}) == [
        (1.0, ("slope 2 (reference)",)), (2.0, ()), (3.0, ("slope 2 (reference)",))]
    assert history.reference.key == 2.0 and history.recent == []
    # axes fixed by the first pass over every setting: slope 3's line fits in each figure
    assert e.figure.axes[0].get_ylim() == pytest.approx((-0.15, 3.15))
    assert e.error is None and e.book_errors == {}


def test_book_default_figure_keeps_only_the_reference_after_the_notebook_sets_picks(monkeypatch):
    e = _slope_explorer(History(keep=3))  # built outside the book: the JupyterLab figure
    e.set(slope=2.0)
    e.set(slope=1.0)
    assert _labels(e) == ["slope 2 (earlier)", "current"]  # JupyterLab shows the pick behind
    jupyterlab_png = e.view.image.value
    monkeypatch.setenv(STATIC_BOOK_ENV, "1")
    e = _slope_explorer(History(keep=3))
    default_png = e.view.image.value
    e.set(slope=2.0)  # a chapter's picks after the explorer is built, then back to the default
    e.set(slope=1.0)
    assert [t.key for t in e.history.recent] == [2.0]  # the history keeps the pick (JupyterLab's)
    assert _labels(e) == ["current"]  # the page's figure does not
    assert e.view.image.value == default_png != jupyterlab_png


def test_book_options_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="not a control"):
        _book_explorer(monkeypatch, book_vary={"colour_": None})
    with pytest.raises(ValueError, match=r"does not offer"):
        _book_explorer(monkeypatch, book_vary={"n": [0, 1]})
    with pytest.raises(TypeError, match="Text cannot switch figures"):
        _book_explorer(monkeypatch, book_vary={"text": ["hi"]})
    with pytest.raises(ValueError, match="book_mode"):
        _book_explorer(monkeypatch, book_mode="all")


def test_outside_the_book_the_explorer_draws_only_its_defaults(monkeypatch):
    monkeypatch.delenv(STATIC_BOOK_ENV, raising=False)
    calls = []
    e = Explorer({"colour": W.Dropdown(options=["red", "green"], value="green")},
                 lambda fig, progress, colour: calls.append(colour))
    assert calls == ["green"] and e.widget.children[2] is e.view.image and e._links == []

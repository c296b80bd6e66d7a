"""ipywidgets explorers: thin wrappers that call tested lmlab functions and redraw one figure.

This package holds the building blocks (FigureView, Explorer, History, LiveLossPlot); each
chapter's explorers live in a module of their own (``lmlab.widgets.quickstart``, ``.attention``,
...).

Comparing by looking: every explorer keeps a :class:`History`, the *reference* setting (the first
one drawn, i.e. the defaults) and the last few settings tried. Each redraw draws them behind the
current setting (the reference dashed black, earlier settings grey, fading with age) on steady axes
(limits that only grow to take in a new curve, with a cap for runs that blow up), so a change
shows as a curve moving against still axes.

Every explorer is a root ``VBox`` with CSS class ``lmlab-explorer``: a row of controls, a status
line with a progress bar for slow recomputations, and one persistent matplotlib figure shown as an
``ipywidgets.Image`` (class ``lmlab-figure``). Redrawing replaces the PNG in place: no flicker, no
new figure per change, nothing leaked to pyplot. Because the PNG lives in the widget's state, a
static page (the HTML book) still shows the figure of the default settings.

In the static book (``LMLAB_STATIC_BOOK=1``, set by ``book/build.py``) an explorer also renders a
set of precomputed settings (see :meth:`Explorer.book_settings`) and embeds every figure in a tree
of ``Stack`` widgets whose ``selected_index`` is ``jslink``-ed to the controls' ``index`` (or an
``IntSlider``'s ``value``): moving a control switches the figure in the browser, without a
kernel. Settings outside that set show a notice pointing to JupyterLab.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..history import column
from ..plots import loss_curves

STATIC_NOTE = ("Showing the default settings. Open this chapter in JupyterLab "
               "(<code>make lab</code>) to move the controls.")
STATIC_BOOK_ENV = "LMLAB_STATIC_BOOK"
"""Set to 1 by ``book/build.py`` while it executes the chapters for the static HTML book."""


BOOK_PRODUCT_LIMIT = 12
"""An explorer's book figures: every combination of its varied controls' values when there are at
most this many, else the defaults and each control moved alone (:meth:`Explorer.book_settings`)."""
PRODUCT, ONE_AT_A_TIME = "product", "one at a time"
NOT_PRECOMPUTED = ("<div class='lmlab-not-precomputed' style='padding:2em 1em;color:#555'>"
                   "This setting was not precomputed for the book. Open the chapter in JupyterLab "
                   "(<code>make lab</code>) to run it.</div>")


def static_book() -> bool:
    """True while ``book/build.py`` executes the notebook for the static HTML book."""
    return os.environ.get(STATIC_BOOK_ENV) == "1"


def static_note() -> str:
    """:data:`STATIC_NOTE` while the book build executes the notebook (``LMLAB_STATIC_BOOK=1``),
    where the page will show a frozen figure; empty in JupyterLab, where the controls work."""
    return STATIC_NOTE if static_book() else ""


def control_choices(control: W.ValueWidget) -> tuple[str, list[tuple[str, Any]]]:
    """How a control can switch figures in a page without a kernel: the widget trait the browser
    changes (``index`` of a selection widget, ``value`` of an ``IntSlider``) and the control's
    ``(label, value)`` pairs, in the order of that trait's integer values (an IntSlider's list
    starts at ``min``). Raises ``TypeError`` for any other control (a free float, a text)."""
    if hasattr(control, "_options_values"):  # Dropdown, SelectionSlider, ToggleButtons, ...
        return "index", list(zip(control._options_labels, control._options_values, strict=True))
    if isinstance(control, W.IntSlider):
        if control.step != 1 or control.min < 0:
            raise TypeError(f"the IntSlider {control.description!r} has min={control.min}, "
                            f"step={control.step}: only min >= 0 and step 1 can switch figures "
                            "in the book.")
        values = range(control.min, control.max + 1)
        return "value", [(str(v), v) for v in values]
    raise TypeError(f"a {type(control).__name__} cannot switch figures in the static book: "
                    "use a selection widget (Dropdown, SelectionSlider, ToggleButtons) or an "
                    "IntSlider with step 1, or leave the control out of book_vary.")


def _switchable(control: W.ValueWidget) -> bool:
    try:
        control_choices(control)
    except TypeError:
        return False
    return True


REFERENCE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def value_slider(description: str, options: Sequence[float], value: float) -> W.SelectionSlider:
    """A ``SelectionSlider`` over the numbers ``options`` (labelled with ``:g``) set to ``value``;
    a ``value`` that is not among them is refused with the options listed."""
    options = [float(o) for o in options]
    if float(value) not in options:
        raise ValueError(f"{description} default {value!r} is not among the options {options}.")
    return W.SelectionSlider(options=[(f"{o:g}", o) for o in options], value=float(value),
                             description=description, continuous_update=False,
                             style={"description_width": "initial"})


@dataclass(frozen=True)
class Trace:
    """What one setting produced: ``key`` identifies the setting, ``data`` is whatever the
    explorer needs to draw it again (a history, a list of values, ...)."""

    key: Hashable
    label: str
    data: Any


def metric_line(metric: str = "val_loss", x: str = "step",
                transform: Callable[[float], float] | None = None) -> Callable:
    """A ``plot`` for :meth:`History.draw_behind`: ``metric`` (optionally transformed) against
    ``x`` for a run given as history rows or as anything with a ``.history`` list of rows."""

    def plot(ax, run, label: str, style: dict) -> None:
        xs, ys = column(getattr(run, "history", run), metric, x)
        ax.plot(xs, [transform(y) for y in ys] if transform else ys, label=label, **style)

    return plot


class History:
    """The reference setting and the last ``keep`` other settings an explorer drew.

    In a draw function: ``history.record(key, label, data)`` for the current setting; draw each
    ``(trace, style, label)`` of ``history.behind(key)`` under the current curve (the reference
    first, then earlier settings oldest first; the current setting is never drawn twice); call
    ``history.fix_limits(ax, name)`` on each axis after drawing. The explorer commits the
    recorded trace and limits after a successful draw (and drops them after a failed one).

    The first committed trace becomes the reference unless :meth:`set_reference` chose one. An
    axis's limits only ever grow (see :meth:`fix_limits`), so curves are compared on steady axes.
    """

    def __init__(self, keep: int = 3):
        if not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep={keep!r} is invalid: expected a whole number >= 0 of earlier "
                             "settings to draw.")
        self.keep = keep
        self.reference: Trace | None = None
        self.recent: list[Trace] = []  # oldest first, at most ``keep``
        self.show_earlier = True  # False: only the reference behind (the static book's figures)
        self.limits: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
        self._pending: Trace | None = None
        self._pending_limits: dict[str, tuple] = {}

    def set_reference(self, key: Hashable, label: str, data: Any) -> None:
        self.reference = Trace(key, label, data)

    def record(self, key: Hashable, label: str, data: Any) -> None:
        self._pending = Trace(key, label, data)

    def behind(self, key: Hashable) -> list[tuple[Trace, dict, str]]:
        """(trace, matplotlib line style, legend label) of every setting to draw under the
        current one (``key``)."""
        out = []
        ref_key = self.reference.key if self.reference is not None else object()
        if self.reference is not None and self.reference.key != key:
            out.append((self.reference, dict(REFERENCE_STYLE),
                        f"{self.reference.label} (reference)"))
        earlier = ([t for t in self.recent if t.key not in (key, ref_key)]  # oldest first
                   if self.show_earlier else [])
        for i, trace in enumerate(earlier):
            age = len(earlier) - 1 - i  # 0: the setting tried just before this one
            style = {"color": "0.45", "linewidth": 1.0, "alpha": max(0.25, 0.75 - 0.2 * age)}
            out.append((trace, style, f"{trace.label} (earlier)"))
        return out

    def draw_behind(self, ax, key: Hashable, plot: Callable) -> None:
        """``plot(ax, trace.data, label, style)`` for each setting of :meth:`behind` (``style``: a
        dict of matplotlib line properties, with a z-order below the default lines', so the
        current setting stays on top whichever is drawn first)."""
        for trace, style, label in self.behind(key):
            plot(ax, trace.data, label, {"zorder": 1.5, **style})

    def fix_limits(self, ax, name: str, *, x: bool = True, ymax: float | None = None) -> None:
        """Keep axis ``name`` steady across settings: its limits are the union of every limit it
        had at a successful draw (they grow to show a curve no earlier setting reached, and never
        shrink or jump back), with the top of the y range capped at ``ymax`` (a diverging run runs
        off the top instead of squashing every other curve). ``x=False`` leaves the x range to
        the current draw (for an x axis that is itself a control, like depth)."""
        xlim, ylim = tuple(ax.get_xlim()), tuple(ax.get_ylim())
        if name in self.limits:
            (x0, x1), (y0, y1) = self.limits[name]
            xlim = (min(x0, xlim[0]), max(x1, xlim[1]))
            ylim = (min(y0, ylim[0]), max(y1, ylim[1]))
        if ymax is not None and ylim[1] > ymax > ylim[0]:
            ylim = (ylim[0], ymax)
        if x:
            ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        self._pending_limits[name] = (xlim, ylim)

    def commit(self) -> None:
        trace, self._pending = self._pending, None
        self.limits.update(self._pending_limits)
        self._pending_limits = {}
        if trace is None:
            return
        if self.reference is None:
            self.reference = trace
            return
        if trace.key == self.reference.key:
            return
        self.recent = [t for t in self.recent if t.key != trace.key] + [trace]
        if len(self.recent) > self.keep:
            self.recent = self.recent[len(self.recent) - self.keep:]

    def commit_limits(self) -> None:
        """Keep the axis limits of the draw just made, not its trace (the book's figures: each
        shows the reference behind it, none shows the settings drawn before it)."""
        self._pending = None
        self.commit()

    def discard(self) -> None:
        self._pending, self._pending_limits = None, {}


class FigureView:
    """A matplotlib Figure (not registered with pyplot) rendered into an ``ipywidgets.Image``."""

    def __init__(self, figsize=(7.5, 4.0), dpi: int = 100):
        self.figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))
        self.image.add_class("lmlab-figure")
        self.renders = 0
        self.shown = self.figure  # the figure whose PNG the Image shows
        self._scratch: Figure | None = None

    def png(self, figure: Figure | None = None) -> bytes:
        buf = io.BytesIO()
        (figure or self.figure).savefig(buf, format="png")
        return buf.getvalue()

    def redraw(self, draw: Callable[[Figure], None]) -> None:
        """Clear the figure, let ``draw(figure)`` fill it, push the new PNG to the Image."""
        self.figure.clear()
        draw(self.figure)
        self.shown = self.figure  # before the Image changes: its observers may read it
        self.image.value = self.png()
        self.renders += 1

    def preview(self, draw: Callable[[Figure], None]) -> None:
        """Show ``draw(scratch)`` drawn on a scratch figure of the same size, leaving
        :attr:`figure` to the redraw in progress (which is still filling it)."""
        if self._scratch is None:
            self._scratch = Figure(figsize=self.figure.get_size_inches(), dpi=self.figure.dpi,
                                   layout="constrained")
            FigureCanvasAgg(self._scratch)
        self._scratch.clear()
        draw(self._scratch)
        self.shown = self._scratch
        self.image.value = self.png(self._scratch)


PREVIEW_INTERVAL_S = 1.0
"""Least wall time between two previews of a figure while its run trains (the first is drawn
at once); a preview also waits at least ``PREVIEW_COST_RATIO`` times as long as the last one
took to draw, so drawing never takes more than about a tenth of the training's time."""
PREVIEW_COST_RATIO = 9.0


class Explorer:
    """Controls + one figure. ``draw(figure, progress, **values)`` is called with the controls'
    current values whenever one changes; ``progress(fraction, text)`` updates the status line.

    A setting that trains shows its figure while it trains: the draw function passes
    ``progress(fraction, text, preview=fn)`` from the training callback, where ``fn(figure)``
    draws the figure from the rows so far. The explorer draws the first preview at once, then at
    most one per :data:`PREVIEW_INTERVAL_S` (``preview_interval``); ``previews`` counts them. A
    setting that fails puts the last complete figure back.

    ``explorer.set(name=value, ...)`` changes controls from code (tests do this); ``.widget`` is
    the root VBox; displaying the explorer displays it. ``history`` (a :class:`History` the draw
    function records into) is committed after each successful draw. ``note`` defaults to
    :func:`static_note`: shown in the static book only.

    In the static book (:func:`static_book`) the explorer draws every setting of
    :meth:`book_settings` once, and the page switches between those figures when a control moves
    (no kernel needed). ``book_vary`` names the controls that move in the book and, for each, the
    values precomputed (``None``: all its options); by default every control
    :func:`control_choices` accepts, with all its options. ``book_mode`` is :data:`PRODUCT` (every
    combination) or :data:`ONE_AT_A_TIME` (the defaults and each control moved alone); by
    default the product when it has at most :data:`BOOK_PRODUCT_LIMIT` settings. Controls that
    do not move in the book are disabled there. ``book_note`` adds a sentence to the page's note
    (why a control is fixed, say).
    """

    def __init__(self, controls: Mapping[str, W.ValueWidget], draw: Callable, *, title: str = "",
                 figsize=(7.5, 4.0), note: str | None = None, auto_update: bool = True,
                 history: History | None = None,
                 book_vary: Mapping[str, Sequence | None] | None = None,
                 book_mode: str | None = None, book_note: str = ""):
        self.controls = dict(controls)
        self._draw = draw
        self.preview_interval = PREVIEW_INTERVAL_S
        self.previews = 0
        self._next_preview = 0.0  # perf_counter time from which the next preview may be drawn
        self.history = history if history is not None else History()
        self.view = FigureView(figsize)
        self.status = W.HTML(value="")
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0,
                                   layout=W.Layout(width="180px", visibility="hidden"))
        self.error: Exception | None = None
        self.book_vary = self._book_vary(book_vary)
        if book_mode not in (None, PRODUCT, ONE_AT_A_TIME):
            raise ValueError(f"book_mode={book_mode!r} is invalid: expected {PRODUCT!r}, "
                             f"{ONE_AT_A_TIME!r} or None (the product when it is small).")
        self.book_mode = book_mode
        self.book_errors: dict[tuple, Exception] = {}  # book setting -> what its draw raised
        self._links: list = []
        if auto_update:
            for control in self.controls.values():
                control.observe(self._on_change, names="value")
        figure: W.Widget = self.view.image
        if static_book():
            figure, book_text = self._render_book()
            note = (book_text + (" " + book_note if book_note else "")) if note is None else note
        else:
            self.update()
            note = static_note() if note is None else note
        header = [W.HTML(f"<b>{title}</b>")] if title else []
        self.widget = W.VBox(
            header
            + [W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")),
               W.HBox([self.bar, self.status]), figure,
               W.HTML(f"<small class='lmlab-note'>{note}</small>") if note else W.HTML("")]
        )
        self.widget.add_class("lmlab-explorer")

    @property
    def values(self) -> dict:
        return {name: c.value for name, c in self.controls.items()}

    @property
    def figure(self) -> Figure:
        return self.view.figure

    def progress(self, fraction: float, text: str = "",
                 preview: Callable[[Figure], None] | None = None) -> None:
        """Move the progress bar to ``fraction`` with status ``text``; when ``preview`` is given
        and one is due, redraw the figure with ``preview(figure)`` (the run so far)."""
        self.bar.layout.visibility = "visible"
        self.bar.value = min(1.0, max(0.0, fraction))
        if text:
            self.status.value = text
        if preview is not None and time.perf_counter() >= self._next_preview:
            start = time.perf_counter()
            self.view.preview(preview)
            self.previews += 1
            now = time.perf_counter()
            self._next_preview = now + max(self.preview_interval,
                                           PREVIEW_COST_RATIO * (now - start))

    def update(self) -> None:
        start = time.perf_counter()
        self.error = None
        self._next_preview = 0.0  # the first preview of a new setting is drawn at once
        shown = self.view.image.value
        try:
            self.view.redraw(lambda fig: self._draw(fig, self.progress, **self.values))
            self.history.commit()
            self.status.value = f"<small>updated in {time.perf_counter() - start:.1f} s</small>"
        except Exception as err:  # shown to the learner; the previous figure stays up
            self.history.discard()
            self.error = err
            self.view.image.value = shown  # a preview may have replaced it
            self.status.value = f"<span style='color:#b00'>{type(err).__name__}: {err}</span>"
        finally:
            self.bar.layout.visibility = "hidden"

    def _on_change(self, _change) -> None:
        self.update()

    def set(self, **values) -> None:
        """Set several controls, redrawing once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown controls {sorted(unknown)}; "
                             f"this explorer has {list(self.controls)}.")
        for name, value in values.items():
            c = self.controls[name]
            c.unobserve(self._on_change, names="value")
            try:
                c.value = value
            finally:
                c.observe(self._on_change, names="value")
        self.update()

    # ------------------------------------------------------------------------- the static book
    def _book_vary(self, book_vary) -> dict[str, list]:
        """Checked ``book_vary``: control name -> the values precomputed for the book."""
        if book_vary is None:
            book_vary = {name: None for name, c in self.controls.items() if _switchable(c)}
        out = {}
        for name, values in book_vary.items():
            if name not in self.controls:
                raise ValueError(f"book_vary names {name!r}, which is not a control; this "
                                 f"explorer has {list(self.controls)}.")
            offered = [v for _, v in control_choices(self.controls[name])[1]]
            values = offered if values is None else list(values)
            missing = [v for v in values if v not in offered]
            if missing:
                raise ValueError(f"book_vary[{name!r}] has {missing}, which the control does not "
                                 f"offer ({offered}).")
            out[name] = values
        return out

    def book_settings(self) -> tuple[list[dict], str]:
        """The settings the static book precomputes (the defaults first) and a sentence saying
        which they are. Every other control keeps its default value."""
        defaults = self.values
        varied = {n: v for n, v in self.book_vary.items() if set(v) - {defaults[n]}}
        if not varied:
            return [defaults], STATIC_NOTE
        product = math.prod(len(set(v) | {defaults[n]}) for n, v in varied.items())
        mode = self.book_mode or (PRODUCT if product <= BOOK_PRODUCT_LIMIT else ONE_AT_A_TIME)
        settings = [defaults]
        if mode == PRODUCT:
            for combo in itertools.product(*varied.values()):
                settings.append({**defaults, **dict(zip(varied, combo, strict=True))})
        else:
            for name, values in varied.items():
                settings += [{**defaults, name: v} for v in values]
        unique: dict[tuple, dict] = {}
        for s in settings:
            unique.setdefault(tuple(s.items()), s)
        settings = list(unique.values())
        names = ", ".join(self._describe(n, varied[n]) for n in varied)
        what = "every value of" if len(varied) == 1 else "every combination of"
        if mode == PRODUCT:
            which = f"{what} {names}, {len(settings)} figures"
        else:
            which = f"the default settings and each of {names} moved alone, {len(settings)} figures"
        total = math.prod(len(control_choices(self.controls[n])[1]) for n in varied)
        if len(settings) < total:
            rest = total - len(settings)
            which += (f"; the other {rest} settings show a notice" if rest > 1
                      else "; the other setting shows a notice")
        fixed = [self._describe(n) for n in self.controls if n not in varied]
        if fixed:
            which += f"; {', '.join(fixed)} stay{'s' if len(fixed) == 1 else ''} at the default"
        return settings, (
            f"The figures on this page were precomputed when the book was built: {which}. Moving "
            "a control switches between them in your browser. Open the chapter in JupyterLab "
            "(<code>make lab</code>) to run any setting.")

    def _describe(self, name: str, values: Sequence | None = None) -> str:
        """The control's label in italics, followed by ``in {values}`` when ``values`` are only
        some of its options (the default value included)."""
        control = self.controls[name]
        text = f"<i>{getattr(control, 'description', '') or name}</i>"
        if values is None:
            return text
        choices = control_choices(control)[1]
        shown = set(values) | {control.value}
        if len(shown) == len(choices):
            return text
        return text + " in {" + ", ".join(label for label, v in choices if v in shown) + "}"

    def _draw_for_book(self, setting: dict, *, reference: bool, png: bool) -> bytes | None:
        """Draw one book setting; each shows the reference behind it and nothing else. No
        previews while a run trains for the book: nobody watches them."""
        self._next_preview = math.inf
        self.view.figure.clear()
        self._draw(self.view.figure, self.progress, **setting)
        if reference:
            self.history.commit()
        else:
            self.history.commit_limits()
        return self.view.png() if png else None

    def _render_book(self) -> tuple[W.Widget, str]:
        """Draw every book setting and return the widget that switches between them in the
        page, with the note saying which settings are there. Two passes: the first fixes axes
        that take in every setting, so the figures compare on the same axes; the default setting
        is drawn last, leaving ``figure``, ``history`` and ``error`` as they are in JupyterLab."""
        settings, note = self.book_settings()
        default, others = settings[0], settings[1:]
        # every figure of the page, now and after any later set(): the reference behind it only
        self.history.show_earlier = False
        try:
            self._draw_for_book(default, reference=True, png=False)
        except Exception:
            self.history.discard()
        failed = set()
        for s in others:
            try:
                self._draw_for_book(s, reference=False, png=False)
            except Exception as err:
                self.history.discard()
                self.book_errors[tuple(s.items())] = err
                failed.add(tuple(s.items()))
        figures: dict[tuple, W.Widget] = {}
        for s in others:
            key = tuple(s.items())
            if key in failed:
                err = self.book_errors[key]
                figures[key] = W.HTML(f"<span style='color:#b00'>{type(err).__name__}: "
                                      f"{err}</span>")
                continue
            image = W.Image(value=self._draw_for_book(s, reference=False, png=True), format="png",
                            layout=W.Layout(max_width="100%", height="auto"))
            image.add_class("lmlab-figure")
            figures[key] = image
        self.update()
        self.bar.value = 0.0
        if self.error is None:
            self.status.value = ""
        figures[tuple(default.items())] = self.view.image
        varied = [n for n in self.controls if len({s[n] for s in settings}) > 1]
        for name, control in self.controls.items():
            if name not in varied:
                control.disabled = True
        root = self._switch(varied, 0, default, figures, W.HTML(NOT_PRECOMPUTED))
        root.add_class("lmlab-book-figures")
        return root, note

    def _switch(self, varied: list[str], level: int, setting: dict, figures: dict,
                notice: W.Widget) -> W.Widget | None:
        """The figure of ``setting`` when every control is placed, else a ``Stack`` over the
        values of control ``varied[level]``, its ``selected_index`` linked in the browser to the
        control; ``None`` when no precomputed figure lies below."""
        if level == len(varied):
            return figures.get(tuple(setting.items()))
        name = varied[level]
        control = self.controls[name]
        trait, choices = control_choices(control)
        children = [self._switch(varied, level + 1, {**setting, name: v}, figures, notice)
                    for _, v in choices]
        if all(c is None for c in children):
            return None
        children = [notice if c is None else c for c in children]
        offset = control.min if trait == "value" else 0  # an IntSlider's value is the index
        stack = W.Stack([notice] * offset + children,
                        selected_index=offset + [v for _, v in choices].index(control.value))
        self._links.append(W.jslink((control, trait), (stack, "selected_index")))
        return stack

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"{type(self).__name__} with controls {list(self.controls)}"
        return bundle


def live_callback(progress: Callable, steps: int, describe: Callable[[dict], str],
                  plot: Callable[[Figure, list[dict]], None]) -> Callable[[dict], None]:
    """A ``train(..., callback=...)`` for an explorer's draw function: it keeps the history rows
    so far, moves the progress bar to step / ``steps`` with status ``describe(row)``, and offers
    ``plot(figure, rows)`` as the preview (:meth:`Explorer.progress` draws it when one is due), so
    the figure grows while the run trains."""
    rows: list[dict] = []

    def on_row(row: dict) -> None:
        rows.append(row)
        progress(row["step"] / steps, describe(row), preview=lambda figure: plot(figure, rows))

    return on_row


class LiveLossPlot:
    """A ``train(..., callback=live)`` callback that redraws the loss curves every ``every`` steps
    (and at each evaluation) in one persistent figure."""

    def __init__(self, every: int = 25, title: str = "training", figsize=(7.5, 3.6)):
        self.every = every
        self.title = title
        self.rows: list[dict] = []
        self.view = FigureView(figsize)
        self.widget = W.VBox([self.view.image])
        self.widget.add_class("lmlab-live-plot")

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        if row["step"] % self.every == 0 or "val_loss" in row:
            self.redraw()

    def redraw(self) -> None:
        def draw(fig):
            ax = fig.add_subplot()
            loss_curves(ax, {"validation": self.rows}, "val_loss", train=True, smooth=10,
                              title=self.title)
            ax.set_ylabel("loss (nats/char)")

        self.view.redraw(draw)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

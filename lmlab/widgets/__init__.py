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
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..plots import loss_curves

STATIC_NOTE = ("Showing the default settings. Open this chapter in JupyterLab "
               "(<code>make lab</code>) to move the controls.")
STATIC_BOOK_ENV = "LMLAB_STATIC_BOOK"
"""Set to 1 by ``book/build.py`` while it executes the chapters for the static HTML book."""


def static_note() -> str:
    """:data:`STATIC_NOTE` while the book build executes the notebook (``LMLAB_STATIC_BOOK=1``),
    where the page will show a frozen figure; empty in JupyterLab, where the controls work."""
    return STATIC_NOTE if os.environ.get(STATIC_BOOK_ENV) == "1" else ""


REFERENCE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


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
        rows = [r for r in getattr(run, "history", run) if r.get(metric) is not None]
        ys = [transform(r[metric]) if transform else r[metric] for r in rows]
        ax.plot([r[x] for r in rows], ys, label=label, **style)

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
        earlier = [t for t in self.recent if t.key not in (key, ref_key)]  # oldest first
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
    """

    def __init__(self, controls: Mapping[str, W.ValueWidget], draw: Callable, *, title: str = "",
                 figsize=(7.5, 4.0), note: str | None = None, auto_update: bool = True,
                 history: History | None = None):
        self.controls = dict(controls)
        self._draw = draw
        self.preview_interval = PREVIEW_INTERVAL_S
        self.previews = 0
        self._next_preview = 0.0  # perf_counter time from which the next preview may be drawn
        self.history = history if history is not None else History()
        note = static_note() if note is None else note
        self.view = FigureView(figsize)
        self.status = W.HTML(value="")
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0,
                                   layout=W.Layout(width="180px", visibility="hidden"))
        self.error: Exception | None = None
        header = [W.HTML(f"<b>{title}</b>")] if title else []
        self.widget = W.VBox(
            header
            + [W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")),
               W.HBox([self.bar, self.status]), self.view.image,
               W.HTML(f"<small class='lmlab-note'>{note}</small>") if note else W.HTML("")]
        )
        self.widget.add_class("lmlab-explorer")
        if auto_update:
            for control in self.controls.values():
                control.observe(self._on_change, names="value")
        self.update()

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

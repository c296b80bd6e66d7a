"""ipywidgets explorers: thin wrappers that call tested lmlab functions and redraw one figure.

This package holds the building blocks (FigureView, Explorer, LiveLossPlot); each chapter's
explorers live in a module of their own (``lmlab.widgets.quickstart``, ``.attention``, ...).

Every explorer is a root ``VBox`` with CSS class ``lmlab-explorer``: a row of controls, a status
line with a progress bar for slow recomputations, and one persistent matplotlib figure shown as an
``ipywidgets.Image`` (class ``lmlab-figure``). Redrawing replaces the PNG in place: no flicker, no
new figure per change, nothing leaked to pyplot. Because the PNG lives in the widget's state, a
static page (the HTML book) still shows the figure of the default settings.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping

import ipywidgets as W
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STATIC_NOTE = ("Showing the default settings. Open this chapter in JupyterLab "
               "(<code>make lab</code>) to move the controls.")


class FigureView:
    """A matplotlib Figure (not registered with pyplot) rendered into an ``ipywidgets.Image``."""

    def __init__(self, figsize=(7.5, 4.0), dpi: int = 100):
        self.figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))
        self.image.add_class("lmlab-figure")
        self.renders = 0

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return buf.getvalue()

    def redraw(self, draw: Callable[[Figure], None]) -> None:
        """Clear the figure, let ``draw(figure)`` fill it, push the new PNG to the Image."""
        self.figure.clear()
        draw(self.figure)
        self.image.value = self.png()
        self.renders += 1


class Explorer:
    """Controls + one figure. ``draw(figure, progress, **values)`` is called with the controls'
    current values whenever one changes; ``progress(fraction, text)`` updates the status line.

    ``explorer.set(name=value, ...)`` changes controls from code (tests do this); ``.widget`` is
    the root VBox; displaying the explorer displays it.
    """

    def __init__(self, controls: Mapping[str, W.ValueWidget], draw: Callable, *, title: str = "",
                 figsize=(7.5, 4.0), note: str = STATIC_NOTE, auto_update: bool = True):
        self.controls = dict(controls)
        self._draw = draw
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

    def progress(self, fraction: float, text: str = "") -> None:
        self.bar.layout.visibility = "visible"
        self.bar.value = min(1.0, max(0.0, fraction))
        if text:
            self.status.value = text

    def update(self) -> None:
        start = time.perf_counter()
        self.error = None
        try:
            self.view.redraw(lambda fig: self._draw(fig, self.progress, **self.values))
            self.status.value = f"<small>updated in {time.perf_counter() - start:.1f} s</small>"
        except Exception as err:  # shown to the learner; the previous figure stays up
            self.error = err
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


class LiveLossPlot:
    """A ``train(..., callback=live)`` callback that redraws the loss curves every ``every`` steps
    (and at each evaluation) in one persistent figure."""

    def __init__(self, every: int = 25, title: str = "training", figsize=(7.5, 3.6)):
        from ..plots import loss_curves

        self._loss_curves = loss_curves
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
            self._loss_curves(ax, {"validation": self.rows}, "val_loss", train=True, smooth=10,
                              title=self.title)
            ax.set_ylabel("loss (nats/char)")

        self.view.redraw(draw)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

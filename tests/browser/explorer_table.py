"""Every chapter's explorer, as the browser tests drive it: one line per explorer.

Both the static book (test_book.py) and JupyterLab (test_jupyterlab.py) move the named control
of the explorer whose title contains ``title`` to ``choice`` and check that the figure changes;
a chapter with two explorers has two lines.
In the book, ``choice`` must be one of the settings the explorer precomputes
(``Explorer.book_settings``); in JupyterLab it is then read back from the experiment cache the
book build filled, so the redraw is quick. A new chapter with an explorer is one more line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExplorerCase:
    notebook: str  # file stem in notebooks/
    title: str  # part of the explorer's title (the bold line above its controls)
    control: str  # the control's description (its label on the page)
    choice: str | int  # the option's label to pick, or a number of slider steps (+ right, - left)
    name: str = ""  # tells apart a chapter's second explorer (test ids, screenshot names)

    @property
    def id(self) -> str:
        return f"{self.notebook}-{self.name}" if self.name else self.notebook


EXPLORERS = [
    ExplorerCase("00_quickstart", "Learning rate", "peak lr", "0.01"),
    ExplorerCase("01_attention", "Attention weights", "head", "mean over heads"),
    ExplorerCase("02_objectives", "Pretraining objectives", "objective", "clm"),
    ExplorerCase("03_initialization", "Initialization explorer", "scheme", "N(0, 1)"),
    ExplorerCase("04_optimization", "Optimizer explorer", "schedule", "constant"),
    ExplorerCase("05_regularization", "Regularization explorer", "dropout p", "0.2"),
    ExplorerCase("06_finetuning", "Fine-tuning explorer", "method", "output-layer probe"),
    ExplorerCase("07_distillation_rl", "Distillation and RL explorer", "distillation T", "2"),
    ExplorerCase("08_scaling", "Scaling-law explorer", "tokens D", -1),
    ExplorerCase("08_scaling", "Pruning explorer", "prune", "rows", name="pruning"),
]

BY_NOTEBOOK: dict[str, list[ExplorerCase]] = {}
"""The cases of each notebook, in order (JupyterLab runs a notebook once for all of them)."""
for _case in EXPLORERS:
    BY_NOTEBOOK.setdefault(_case.notebook, []).append(_case)

MAX_SLIDER_STEPS = 40

# The visible figure of an explorer: src and whether it decoded.
FIGURE_JS = """
(root) => {
  const img = Array.from(root.querySelectorAll('img.lmlab-figure'))
    .find((i) => i.offsetParent !== null);
  return img ? {src: img.src, decoded: img.complete && img.naturalWidth > 0} : null;
}
"""


def find_explorer(page, case: ExplorerCase, scope: str = ""):
    """The explorer of ``case`` on the page (``scope``: a CSS prefix, e.g. the notebook panel)."""
    return page.locator(f"{scope} .lmlab-explorer".strip()).filter(has_text=case.title).first


def control_box(explorer, description: str):
    """The widget box (label + input) whose label is ``description``."""
    label = explorer.locator(".widget-label", has_text=description).first
    return label.locator("xpath=..")


def move_control(explorer, case: ExplorerCase) -> str:
    """Set the control as a reader would (select, click, or keys on a slider); returns what was
    done, for messages."""
    box = control_box(explorer, case.control)
    if box.count() == 0:
        raise AssertionError(
            f"{case.notebook}: no control labelled {case.control!r} in the explorer {case.title!r}"
        )
    select = box.locator("select")
    if select.count():
        before = select.evaluate("(s) => s.options[s.selectedIndex].text")
        select.select_option(label=str(case.choice))
        return f"{case.control}: {before!r} -> {case.choice!r}"
    buttons = box.locator("button", has_text=str(case.choice))
    if buttons.count():
        buttons.first.click()
        return f"{case.control}: clicked {case.choice!r}"
    handle = box.locator(".noUi-handle, [role='slider']").first
    if handle.count() == 0:
        raise AssertionError(
            f"{case.notebook}: the control {case.control!r} is neither a "
            "dropdown, buttons nor a slider"
        )
    readout = box.locator(".widget-readout").first
    before = readout.inner_text().strip()
    handle.focus()
    if isinstance(case.choice, int):
        key = "ArrowRight" if case.choice > 0 else "ArrowLeft"
        for _ in range(abs(case.choice)):
            handle.press(key)
        return f"{case.control}: {before!r} moved {case.choice:+d} step(s)"
    for key in ("ArrowRight", "ArrowLeft"):
        for _ in range(MAX_SLIDER_STEPS):
            if readout.inner_text().strip() == str(case.choice):
                return f"{case.control}: {before!r} -> {case.choice!r}"
            handle.press(key)
        if readout.inner_text().strip() == str(case.choice):
            return f"{case.control}: {before!r} -> {case.choice!r}"
    raise AssertionError(
        f"{case.notebook}: the slider {case.control!r} never showed "
        f"{case.choice!r} (it shows {readout.inner_text()!r})"
    )

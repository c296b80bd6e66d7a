"""Every chapter notebook is stored clean and follows the workbook's conventions.

Fix a failure with `make strip` (outputs, execution counts, widget state) or by editing the
notebook (parameters cell, kernelspec, asserts, name).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NAME = re.compile(r"^\d\d_[a-z0-9]+(_[a-z0-9]+)*\.ipynb$")


def _ids(paths):
    return [p.name for p in paths]


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def code_of(cell) -> str:
    """A code cell's source as plain Python (IPython magics and shell escapes translated)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(cell.source)
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return "\n".join(
            line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))
        )


def has_assert(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return re.search(r"^\s*assert\b", source, re.MULTILINE) is not None
    return any(isinstance(node, ast.Assert) for node in ast.walk(tree))


def problems_in(nb: nbformat.NotebookNode) -> list[str]:
    """Everything wrong with one notebook, one readable line each (empty: clean)."""
    problems = []
    if nb.get("nbformat") != 4:
        problems.append(f"nbformat {nb.get('nbformat')}, expected 4")
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        problems.append(f"invalid nbformat: {exc.message}")

    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"kernelspec name is {kernel!r}, expected 'python3'")
    if "widgets" in nb.metadata:
        problems.append("widget state stored in the notebook metadata (make strip)")

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i + 1} has {len(cell.outputs)} stored output(s) (make strip)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i + 1} stores execution count {cell.execution_count}")

    tagged = [
        i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if len(tagged) != 1:
        problems.append(f"{len(tagged)} cells tagged 'parameters', expected exactly one")
    elif tagged[0] >= 5:
        problems.append(f"the 'parameters' cell is cell {tagged[0] + 1}; it must be in the first 5")
    elif nb.cells[tagged[0]].cell_type != "code":
        problems.append("the cell tagged 'parameters' is not a code cell")

    if not any(c.cell_type == "code" and has_assert(code_of(c)) for c in nb.cells):
        problems.append("no `assert` in any code cell (every claim in the prose is checked)")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_clean_and_conventional(path: Path):
    assert NAME.match(path.name), f"{path.name}: name it NN_topic.ipynb (e.g. 03_initialization)"
    problems = problems_in(read(path))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def test_chapter_numbers_are_unique():
    numbers = [p.name[:2] for p in NOTEBOOKS if NAME.match(p.name)]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"two notebooks share chapter number(s) {duplicates}"


# ---------------------------------------------------------------- the checks themselves can fail
def _clean_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell("steps = 10")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        params,
        nbformat.v4.new_code_cell("%matplotlib inline\nx = steps * 2\nassert x == 20"),
    ]
    return nb


def test_checks_catch_a_dirty_notebook():
    assert problems_in(_clean_notebook()) == []

    nb = _clean_notebook()
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    nb.cells[2].execution_count = 3
    nb.metadata["kernelspec"]["name"] = "lmlab"
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.cells[1].metadata["tags"] = []
    nb.cells[2].source = "x = 1  # assert nothing"
    found = "\n".join(problems_in(nb))
    for expected in (
        "stored output",
        "execution count 3",
        "kernelspec name is 'lmlab'",
        "widget state",
        "0 cells tagged 'parameters'",
        "no `assert`",
    ):
        assert expected in found, f"missing {expected!r} in:\n{found}"

    late = _clean_notebook()
    late.cells = [nbformat.v4.new_markdown_cell(f"part {i}") for i in range(5)] + late.cells
    assert any("first 5" in p for p in problems_in(late))
    assert not NAME.match("3_init.ipynb") and not NAME.match("03-Init.ipynb")
    assert NAME.match("03_initialization.ipynb") and NAME.match("00_quickstart.ipynb")

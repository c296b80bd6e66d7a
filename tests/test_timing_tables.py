"""The chapter timing tables: counted right, and quoted by the README exactly as recorded."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("lmlab_tools_time", ROOT / "tools" /
                                                  "time_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("profile", ["ci", "cpu", "gpu"])
def test_readme_quotes_results_tables_verbatim(profile):
    tool = load_tool()
    begin, end = tool.markers(profile)
    pattern = re.compile(re.escape(begin) + r"(.*?)" + re.escape(end), flags=re.S)
    results = pattern.findall((ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8"))
    readme = pattern.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(readme) <= 1 and len(results) <= 1
    if readme:  # a table the README shows must be the one recorded in RESULTS.md
        assert results == readme, f"README's {profile} timing table differs from RESULTS.md's"


def test_count_asserts_counts_statements_not_words():
    tool = load_tool()
    source = ("%matplotlib inline\nx = 'assert'  # assert in a comment\nassert x\n"
              "if x:\n    assert 1, 'm'")
    assert tool.count_asserts(source) == 2


def test_asserts_that_ran_stops_at_the_first_failing_cell():
    tool = load_tool()
    nb = nbformat.v4.new_notebook()
    ok = nbformat.v4.new_code_cell("assert True\nassert 1")
    ok.execution_count = 1
    bad = nbformat.v4.new_code_cell("assert False")
    bad.execution_count = 2
    bad.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="", traceback=[])]
    later = nbformat.v4.new_code_cell("assert 2")
    nb.cells = [ok, bad, later]
    ran, total, failed = tool.asserts_that_ran(nb)
    assert (ran, total) == (2, 4)
    assert failed.startswith("cell 1: AssertionError")


def test_replace_block_rewrites_only_the_marked_table():
    tool = load_tool()
    begin, end = tool.markers("cpu")
    text = f"before\n{begin}\nold\n{end}\nafter"
    assert tool.replace_block(text, "cpu", "new") == f"before\n{begin}\nnew\n{end}\nafter"
    with pytest.raises(SystemExit, match="no .* block"):
        tool.replace_block("no markers here", "cpu", "new")


def test_table_from_an_earlier_runs_rows(tmp_path, capsys):
    tool = load_tool()
    rows = [{"notebook": "00_quickstart.ipynb", "profile": "cpu", "seconds": 108.9,
             "asserts_passed": 19, "asserts": 19, "ok": True, "failure": None},
            {"notebook": "04_optimization.ipynb", "profile": "cpu", "seconds": 217.7,
             "asserts_passed": 10, "asserts": 40, "ok": False,
             "failure": "cell 18: AssertionError"}]
    saved = tmp_path / "rows.json"
    saved.write_text(json.dumps(rows))
    assert tool.main(["--profile", "cpu", "--from-json", str(saved)]) == 1  # one notebook failed
    out = capsys.readouterr().out
    assert ("| `04_optimization.ipynb` | 218 | 3.6 | 10 / 40 (failed: cell 18: AssertionError) |"
            in out)
    assert "| all | 327 | 5.4 | |" in out
    with pytest.raises(SystemExit):  # rows of another profile
        tool.main(["--profile", "ci", "--from-json", str(saved)])
    with pytest.raises(SystemExit, match="every chapter"):  # a partial table is never recorded
        tool.main(["--profile", "cpu", "--from-json", str(saved), "--record"])


def test_explorer_timing_cell_times_every_book_setting_but_the_defaults(tmp_path, monkeypatch):
    """The cell --explorers appends, run in a namespace holding one explorer (as a kernel's
    globals would): one row per non-default setting, with the first preview's time, the files
    added to the cache, and the error a setting raised."""
    import ipywidgets as W

    from lmlab.widgets import Explorer

    tool = load_tool()
    cache, out = tmp_path / "cache", tmp_path / "times.json"
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(cache))
    monkeypatch.setenv(tool.EXPLORER_TIMES_ENV, str(out))

    def draw(fig, progress, x):
        if x == 3:
            raise ValueError("x = 3 is refused")
        progress(0.5, "half", preview=lambda f: f.add_subplot().plot([0, x]))
        (cache / f"run-{x}.json").write_text("{}")  # what a run that trained leaves behind
        fig.add_subplot().plot([0, x])

    cache.mkdir()
    explorer = Explorer({"x": W.Dropdown(options=[1, 2, 3], value=1)}, draw)
    namespace = {"explorer": explorer, "same_explorer": explorer}
    exec(tool.EXPLORER_TIMING_CELL, namespace)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["explorer"], r["change"]) for r in rows] == [("explorer", {"x": "2"}),
                                                          ("explorer", {"x": "3"})]
    assert rows[0]["new_files"] == 1 and rows[0]["error"] is None
    assert 0 <= rows[0]["first_figure"] <= rows[0]["seconds"]
    assert rows[1]["error"] == "ValueError('x = 3 is refused')" and rows[1]["new_files"] == 0
    table = tool.explorer_table([{"notebook": "05_regularization.ipynb", "explorers": rows}],
                                "cpu", "cmd")
    assert "| `05` | explorer | x = 2 |" in table
    assert "| all | | settings that trained: 1 | max " in table
    cached = dict(rows[0], new_files=0, seconds=0.2)  # the same setting, read from the cache
    table = tool.explorer_table([{"notebook": "05_regularization.ipynb",
                                  "explorers": [cached, cached]}], "cpu", "cmd")
    assert "| `05` | explorer | 2 settings that trained nothing | at most 0.2 | - | 0 |" in table
    assert "settings that trained:" not in table

#!/usr/bin/env python
"""Time every chapter notebook in one profile, each on an empty experiment cache.

    python tools/time_notebooks.py --profile cpu            # what `make time-notebooks` runs
    python tools/time_notebooks.py --profile ci 00 03       # only chapters 00 and 03
    python tools/time_notebooks.py --profile cpu --record   # also rewrite the tables

Each notebook runs once with papermill in a kernel of this Python environment, with
``LMLAB_PROFILE`` set and ``LMLAB_CACHE_DIR`` pointing at a fresh empty folder (a cold cache: every
run a learner would wait for is timed). Threads are left to PyTorch's default (all cores), as a
learner's notebook has them. The table says, per notebook, the wall time and how many of its
``assert`` statements ran and held (a failing notebook stops at its first failing cell, named).

``--record`` writes the table into ``benchmarks/RESULTS.md`` between the markers
``<!-- notebook-times:PROFILE:begin -->`` and ``<!-- notebook-times:PROFILE:end -->`` (with the
machine, date and command); the README quotes the same block, and a test keeps the two equal.

``--explorers`` also times what a learner waits for after moving a control: once the notebook has
run (cold cache, so only what the chapter itself trained is cached), one more cell, appended to the
copy papermill executes, sets every explorer in the kernel to each setting the static book would
precompute (:meth:`lmlab.widgets.Explorer.book_settings`, the defaults excluded) in turn, and
records the seconds to the finished figure, the seconds to the first figure drawn while it trains,
and how many files it added to the experiment cache (0: the setting was already cached). That cell's
time is not counted in the notebook's seconds. With ``--record`` the second table goes between
``<!-- explorer-times:PROFILE:begin -->`` and ``<!-- explorer-times:PROFILE:end -->`` in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"
CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"
PROFILES = ("ci", "cpu", "gpu")


def markers(profile: str, name: str = "notebook-times") -> tuple[str, str]:
    return (f"<!-- {name}:{profile}:begin -->", f"<!-- {name}:{profile}:end -->")


def count_asserts(source: str) -> int:
    """``assert`` statements in one code cell (IPython magics are skipped, not parsed)."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return len(re.findall(r"^\s*assert\b", source, flags=re.M))
    return sum(isinstance(node, ast.Assert) for node in ast.walk(tree))


def asserts_that_ran(executed: nbformat.NotebookNode) -> tuple[int, int, str | None]:
    """(asserts in cells that finished, asserts in the notebook, first failing cell or None)."""
    total = ran = 0
    failed = None
    for index, cell in enumerate(executed.cells):
        if cell.cell_type != "code":
            continue
        n = count_asserts(cell.source)
        total += n
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        finished = cell.get("execution_count") is not None and not errors
        if errors and failed is None:
            failed = f"cell {index}: {errors[0].get('ename')}: {errors[0].get('evalue', '')[:80]}"
        if finished and failed is None:
            ran += n
    return ran, total, failed


EXPLORER_TIMES_ENV = "LMLAB_EXPLORER_TIMES"
# The cell --explorers appends: every Explorer in the kernel, each book setting but the defaults.
EXPLORER_TIMING_CELL = """\
import json as _json, os as _os, time as _time
from pathlib import Path as _Path
from lmlab.paths import cache_dir as _cache_dir
from lmlab.widgets import Explorer as _Explorer

def _cached_files():
    return sum(1 for _p in _cache_dir().rglob("*") if _p.is_file())

_cell_start, _rows, _seen = _time.perf_counter(), [], set()
for _name, _ex in list(globals().items()):
    if _name.startswith("_") or not isinstance(_ex, _Explorer) or id(_ex) in _seen:
        continue
    _seen.add(id(_ex))
    _settings, _ = _ex.book_settings()
    _defaults = _settings[0]
    for _setting in _settings[1:]:
        _first, _draw_preview = [], _ex.view.preview
        def _timed_preview(draw, _first=_first, _draw_preview=_draw_preview):
            _first.append(_time.perf_counter())
            _draw_preview(draw)
        _ex.view.preview = _timed_preview
        _before, _t0 = _cached_files(), _time.perf_counter()
        try:
            _ex.set(**_setting)
        finally:
            del _ex.view.preview
        _t1 = _time.perf_counter()
        _rows.append({"explorer": _name, "title": getattr(_ex.widget.children[0], "value", ""),
                      "change": {k: repr(v) for k, v in _setting.items() if v != _defaults[k]},
                      "seconds": round(_t1 - _t0, 2),
                      "first_figure": round(_first[0] - _t0, 2) if _first else None,
                      "new_files": _cached_files() - _before,
                      "error": None if _ex.error is None else repr(_ex.error)})
_Path(_os.environ["EXPLORER_TIMES_ENV"]).write_text(_json.dumps(
    {"rows": _rows, "seconds": _time.perf_counter() - _cell_start}))
""".replace("EXPLORER_TIMES_ENV", EXPLORER_TIMES_ENV)


def time_notebook(path: Path, profile: str, out_dir: Path, explorers: bool = False) -> dict:
    """Run one notebook with papermill on a cold cache; the row for the table (with
    ``explorers``, also ``row["explorers"]``: one row per explorer setting timed)."""
    out = out_dir / path.name
    source = path
    env = dict(os.environ, LMLAB_PROFILE=profile)
    times = out_dir / f"{path.stem}.explorers.json"
    if explorers:
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(EXPLORER_TIMING_CELL))
        source = out_dir / f"{path.stem}.with-explorer-timing.ipynb"
        nbformat.write(nb, source)
        env[EXPLORER_TIMES_ENV] = str(times)
    with tempfile.TemporaryDirectory(prefix="lmlab-cold-cache-") as cache:
        env["LMLAB_CACHE_DIR"] = cache
        cmd = [sys.executable, "-m", "papermill", str(source), str(out), "--kernel", "python3",
               "--cwd", str(path.parent), "--log-level", "WARNING"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    ran, total, failed = (0, 0, "not executed")
    if out.exists():
        ran, total, failed = asserts_that_ran(nbformat.read(out, as_version=4))
    if proc.returncode != 0 and failed is None:
        failed = proc.stderr.strip().splitlines()[-1][:120] if proc.stderr.strip() else "failed"
    row = {"notebook": path.name, "profile": profile, "seconds": round(seconds, 1),
           "asserts_passed": ran, "asserts": total, "ok": proc.returncode == 0,
           "failure": failed}
    if explorers and times.exists():
        timed = json.loads(times.read_text(encoding="utf-8"))
        row["seconds"] = round(seconds - timed["seconds"], 1)
        row["explorers"] = timed["rows"]
    return row


def machine() -> str:
    import torch

    return (f"{os.cpu_count()}-core {platform.machine()}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {torch.get_num_threads()} threads")


def table(rows: list[dict], profile: str, command: str) -> str:
    lines = [f"Profile `{profile}`, cold cache, measured {dt.date.today().isoformat()} on a "
             f"{machine()}; command `{command}`.", "",
             "| notebook | seconds | minutes | asserts passed |", "| --- | ---: | ---: | --- |"]
    for r in rows:
        status = f"{r['asserts_passed']} / {r['asserts']}"
        if not r["ok"]:
            status += f" (failed: {r['failure']})"
        lines.append(f"| `{r['notebook']}` | {r['seconds']:.0f} | {r['seconds'] / 60:.1f} | "
                     f"{status} |")
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| all | {total:.0f} | {total / 60:.1f} | |")
    return "\n".join(lines)


def explorer_table(rows: list[dict], profile: str, command: str) -> str:
    """One line per explorer setting that trained something; the settings of an explorer that
    trained nothing (read from the cache, or no training at all) summed up in one line; the last
    line gives the slowest and the median of the settings that trained."""
    lines = [f"Profile `{profile}`, after each chapter ran on a cold cache, measured "
             f"{dt.date.today().isoformat()} on a {machine()}; command `{command}`. Seconds from "
             "the control's change to the finished figure; *first figure*: to the first figure "
             "drawn while the setting trains; *new files*: files it added to the experiment cache "
             "(0: nothing trained).", "",
             "| notebook | explorer | setting | seconds | first figure | new files |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    trained = []
    for r in rows:
        by_explorer: dict[str, list[dict]] = {}
        for e in r.get("explorers", []):
            title = re.sub(r"<[^>]+>", "", e["title"]) or e["explorer"]
            by_explorer.setdefault(title, []).append(e)
        for title, settings in by_explorer.items():
            idle = []
            for e in settings:
                if not e["new_files"] and not e["error"]:
                    idle.append(e["seconds"])
                    continue
                change = ", ".join(f"{k} = {v}" for k, v in e["change"].items())
                first = "-" if e["first_figure"] is None else f"{e['first_figure']:.2f}"
                error = f" (error: {e['error'][:60]})" if e["error"] else ""
                lines.append(f"| `{r['notebook'][:2]}` | {title} | {change}{error} | "
                             f"{e['seconds']:.1f} | {first} | {e['new_files']} |")
                if e["new_files"]:
                    trained.append(e["seconds"])
            if idle:
                lines.append(f"| `{r['notebook'][:2]}` | {title} | {len(idle)} "
                             f"setting{'s' if len(idle) > 1 else ''} that trained nothing | "
                             f"at most {max(idle):.1f} | - | 0 |")
    if trained:
        trained.sort()
        lines.append(f"| all | | settings that trained: {len(trained)} | max {trained[-1]:.1f}, "
                     f"median {trained[len(trained) // 2]:.1f} | | |")
    return "\n".join(lines)


def replace_block(text: str, profile: str, block: str, name: str = "notebook-times") -> str:
    begin, end = markers(profile, name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {begin} ... {end} block found: add one where the table belongs.")
    return pattern.sub(lambda _: f"{begin}\n{block}\n{end}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("--record", action="store_true",
                        help="write the table into benchmarks/RESULTS.md and README.md")
    parser.add_argument("--explorers", action="store_true",
                        help="also time every explorer's precomputed settings after the "
                             "notebook ran (a second table)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--from-json", type=Path,
                        help="do not run anything: make the table from rows an earlier run "
                             "wrote with --json (same machine and day)")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = json.loads(args.from_json.read_text(encoding="utf-8"))
        if {r["profile"] for r in rows} != {args.profile}:
            parser.error(f"{args.from_json} holds rows of another profile than {args.profile}")
        return report(rows, args)
    notebooks = sorted(NOTEBOOKS.glob(CHAPTER_GLOB))
    if args.chapters:
        notebooks = [p for p in notebooks if p.name[:2] in set(args.chapters)]
        if not notebooks:
            parser.error(f"no chapter matches {args.chapters}")
    if args.record and args.chapters:
        parser.error("--record rewrites the whole table: time every chapter (no chapter list)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmlab-timed-") as out_dir:
        for path in notebooks:
            row = time_notebook(path, args.profile, Path(out_dir), args.explorers)
            rows.append(row)
            print(f"{row['notebook']:32s} {row['seconds']:7.1f} s  asserts "
                  f"{row['asserts_passed']}/{row['asserts']}"
                  + ("" if row["ok"] else f"  FAILED {row['failure']}"), flush=True)
            for e in row.get("explorers", []):
                print(f"    {e['explorer']}: {e['change']} {e['seconds']:.1f} s "
                      f"(first figure {e['first_figure']}, new files {e['new_files']})"
                      + (f" ERROR {e['error']}" if e["error"] else ""), flush=True)
    return report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> int:
    """Print the table; with ``--json`` save the rows; with ``--record`` write the table."""
    if args.record and sorted(r["notebook"] for r in rows) != sorted(
            p.name for p in NOTEBOOKS.glob(CHAPTER_GLOB)):
        raise SystemExit("--record rewrites the whole table: the rows must cover every chapter")
    block = table(rows, args.profile, f"make time-notebooks PROFILE={args.profile}")
    print("\n" + block)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    timed = any("explorers" in r for r in rows)
    if timed:
        explorer_block = explorer_table(
            rows, args.profile, f"python tools/time_notebooks.py --profile {args.profile} "
                                "--explorers")
        print("\n" + explorer_block)
    if args.record:
        for doc in (RESULTS, README):
            doc.write_text(replace_block(doc.read_text(encoding="utf-8"), args.profile, block),
                           encoding="utf-8")
        if timed:
            RESULTS.write_text(replace_block(RESULTS.read_text(encoding="utf-8"), args.profile,
                                             explorer_block, "explorer-times"), encoding="utf-8")
        print(f"recorded in {RESULTS.relative_to(ROOT)} and {README.relative_to(ROOT)}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Build the lmlab book: execute every chapter notebook once, then run Sphinx on the results.

    python book/build.py             # what `make book` runs (two notebooks at a time)
    python book/build.py --jobs 1    # one notebook at a time
    python book/build.py --reuse     # keep executed notebooks whose source has not changed

Steps:
1. discover the chapters: notebooks/[0-9][0-9]_*.ipynb (whatever exists);
2. execute each with papermill in a kernel of *this* Python environment, with LMLAB_PROFILE from
   the environment (default: cpu), into book/_build/executed/;
3. stage book/_build/src/: the book's own files (conf.py, intro.md as index.md, references,
   _static/) next to the executed notebooks, plus offline copies of require.js, the ipywidgets
   embedder and MathJax taken from book/node_modules (`npm ci` from book/package-lock.json);
4. sphinx-build -W --keep-going -b html book/_build/src book/_build/html.

A notebook that fails to execute fails the build (after all notebooks were tried, so one run
reports every failure); so does any Sphinx warning.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
# LMLAB_NOTEBOOKS_DIR points the build at another folder of chapters (for trying the build out).
NOTEBOOKS = Path(os.environ.get("LMLAB_NOTEBOOKS_DIR", ROOT / "notebooks")).resolve()
BUILD = BOOK / "_build"
EXECUTED = BUILD / "executed"
SRC = BUILD / "src"
HTML = BUILD / "html"

CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"
# book file -> name in the staging folder (intro.md becomes the site's index page)
BOOK_FILES = {
    "conf.py": "conf.py",
    "intro.md": "index.md",
    "references.md": "references.md",
    "references.bib": "references.bib",
}
NODE_MODULES = BOOK / "node_modules"
WIDGET_FONT_SUFFIXES = {".woff", ".woff2", ".ttf", ".eot", ".svg"}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Tells the explorers (lmlab.widgets.STATIC_BOOK_ENV) that they are going into a static page:
# each then draws its precomputed settings and links them to its controls in the page, with a
# note saying which settings are there (see "Widgets in two places" in DESIGN.md).
STATIC_BOOK_ENV = "LMLAB_STATIC_BOOK"


def log(msg: str) -> None:
    print(f"[book] {msg}", flush=True)


def discover_chapters(notebook_dir: Path = NOTEBOOKS) -> list[Path]:
    """Every chapter notebook that exists, in chapter order."""
    return sorted(p for p in notebook_dir.glob(CHAPTER_GLOB) if p.is_file())


# ------------------------------------------------------------------------------ node assets
def ensure_node_modules() -> None:
    """Install the pinned JavaScript assets (npm ci) unless node_modules is already current."""
    lock = BOOK / "package-lock.json"
    marker = NODE_MODULES / ".package-lock.json"  # written by npm after every install
    newest_spec = max(p.stat().st_mtime for p in (BOOK / "package.json", lock) if p.exists())
    if marker.exists() and marker.stat().st_mtime >= newest_spec:
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "[book] npm not found: the book serves require.js, the ipywidgets embedder and "
            "MathJax from local copies installed with npm. Install Node.js (>= 18) and retry."
        )
    cmd = [npm, "ci" if lock.exists() else "install", "--ignore-scripts", "--no-audit", "--no-fund"]
    log(" ".join(["npm", *cmd[1:]]) + "  (in book/)")
    subprocess.run(cmd, cwd=BOOK, check=True)


def copy_static_assets(static: Path) -> None:
    """Offline copies of everything the pages would otherwise fetch from a CDN."""
    widgets = static / "widgets"
    widgets.mkdir(parents=True, exist_ok=True)
    shutil.copy2(NODE_MODULES / "requirejs" / "require.js", widgets / "require.js")
    dist = NODE_MODULES / "@jupyter-widgets" / "html-manager" / "dist"
    shutil.copy2(dist / "embed-amd.js", widgets / "embed-amd.js")
    # embed-amd.js loads its icon fonts relative to its own URL.
    for asset in dist.iterdir():
        if asset.suffix in WIDGET_FONT_SUFFIXES:
            shutil.copy2(asset, widgets / asset.name)
    # Widget modules not bundled in embed-amd.js would be requested from here (and 404):
    # conf.py points data-jupyter-widgets-cdn at this folder so nothing goes off-site.
    (widgets / "modules").mkdir(exist_ok=True)
    (widgets / "modules" / "README.txt").write_text(
        "Only the widget modules bundled in embed-amd.js (@jupyter-widgets/base, controls,\n"
        "output) are available offline; a third-party widget would need its AMD bundle here.\n"
    )
    shutil.copytree(NODE_MODULES / "mathjax" / "es5", static / "mathjax", dirs_exist_ok=True)


# ------------------------------------------------------------------------------- execution
def current_env_kernel(tmp: Path) -> Path:
    """A kernelspec dir whose `python3` kernel is this interpreter; put it first in JUPYTER_PATH.

    The chapters name the kernel `python3`; a user-level `python3` kernelspec could point at
    another Python. JUPYTER_PATH has the highest priority, so this one wins.
    """
    spec_dir = tmp / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lmlab book build)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return tmp


def _is_fresh(source: Path, executed: Path, profile: str) -> bool:
    if not executed.exists() or executed.stat().st_mtime < source.stat().st_mtime:
        return False
    try:
        meta = json.loads(executed.read_text(encoding="utf-8"))["metadata"]
    except (OSError, ValueError, KeyError):
        return False
    return meta.get("lmlab_book", {}).get("profile") == profile


def execute_one(source: str, output: str, profile: str, timeout: int) -> tuple[str, float, str]:
    """Execute one notebook; returns (name, seconds, error text or '')."""
    import nbformat
    import papermill as pm

    t0 = time.perf_counter()
    error = ""
    os.environ[STATIC_BOOK_ENV] = "1"  # inherited by the kernel papermill starts
    try:
        pm.execute_notebook(
            source,
            output,
            kernel_name="python3",
            cwd=str(Path(source).parent),
            progress_bar=False,
            log_output=False,
            request_save_on_cell_execute=False,
            execution_timeout=timeout,
        )
    except pm.PapermillExecutionError as exc:
        tb = ANSI.sub("", "\n".join(exc.traceback[-15:]))
        error = (
            f"cell {exc.cell_index} (execution count {exc.exec_count}) raised "
            f"{exc.ename}: {exc.evalue}\n{tb}"
        )
    except Exception as exc:  # kernel died, timeout, bad notebook ...
        error = f"{type(exc).__name__}: {ANSI.sub('', str(exc))}"
    if not error:
        nb = nbformat.read(output, as_version=4)
        nb.metadata["lmlab_book"] = {"profile": profile}
        nbformat.write(nb, output)
    return Path(source).name, time.perf_counter() - t0, error


def execute_chapters(chapters: list[Path], jobs: int, reuse: bool, timeout: int) -> list[str]:
    """Execute the chapters into EXECUTED; returns one message per failed notebook."""
    profile = os.environ["LMLAB_PROFILE"]
    EXECUTED.mkdir(parents=True, exist_ok=True)
    for stale in EXECUTED.glob("*.ipynb"):
        if not (NOTEBOOKS / stale.name).exists():
            stale.unlink()
    todo = []
    for nb in chapters:
        out = EXECUTED / nb.name
        if reuse and _is_fresh(nb, out, profile):
            log(f"{nb.name}: reused (unchanged, profile {profile})")
            continue
        out.unlink(missing_ok=True)
        todo.append((str(nb), str(out), profile, timeout))

    failures = []
    with tempfile.TemporaryDirectory(prefix="lmlab-book-kernel-") as tmp:
        jupyter_path = [str(current_env_kernel(Path(tmp)))]
        if os.environ.get("JUPYTER_PATH"):
            jupyter_path.append(os.environ["JUPYTER_PATH"])
        os.environ["JUPYTER_PATH"] = os.pathsep.join(jupyter_path)
        if jobs > 1 and len(todo) > 1:
            # Share the cores between the kernels instead of oversubscribing them.
            threads = str(max(1, (os.cpu_count() or 1) // jobs))
            os.environ.setdefault("OMP_NUM_THREADS", threads)
            os.environ.setdefault("MKL_NUM_THREADS", threads)
            log(f"executing {len(todo)} notebooks, {jobs} at a time")
            with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
                results = list(pool.map(execute_one, *zip(*todo, strict=True)))
        else:
            results = []
            for args in todo:
                log(f"{Path(args[0]).name}: executing ...")
                results.append(execute_one(*args))
    for name, seconds, error in results:
        if error:
            log(f"{name}: FAILED after {seconds:.1f}s")
            failures.append(f"{name}: {error}")
        else:
            log(f"{name}: executed in {seconds:.1f}s")
    return failures


# ------------------------------------------------------------------------------------ build
def stage(chapters: list[Path]) -> None:
    if SRC.exists():
        shutil.rmtree(SRC)
    SRC.mkdir(parents=True)
    for name, staged in BOOK_FILES.items():
        shutil.copy2(BOOK / name, SRC / staged)
    shutil.copytree(BOOK / "_static", SRC / "_static")
    copy_static_assets(SRC / "_static")
    for nb in chapters:
        shutil.copy2(EXECUTED / nb.name, SRC / nb.name)


def sphinx_build() -> int:
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    cmd += ["-d", str(BUILD / "doctrees"), str(SRC), str(HTML)]
    log("sphinx-build -W --keep-going -b html book/_build/src book/_build/html")
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("LMLAB_BOOK_JOBS", min(2, os.cpu_count() or 1))),
        help="notebooks executed at once (default: $LMLAB_BOOK_JOBS, else 2 where there are "
        "2 or more cores); the cores are shared between the kernels",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep executed notebooks newer than their source (same profile)",
    )
    parser.add_argument(
        "--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("LMLAB_PROFILE", "cpu")
    t_start = time.perf_counter()
    chapters = discover_chapters()
    if not chapters:
        log(f"no chapter notebooks ({CHAPTER_GLOB}) in {NOTEBOOKS}: building the front matter only")
    log(f"profile {os.environ['LMLAB_PROFILE']}; chapters: {', '.join(c.name for c in chapters)}")

    ensure_node_modules()
    t0 = time.perf_counter()
    failures = execute_chapters(chapters, args.jobs, args.reuse, args.timeout)
    log(f"executed {len(chapters)} notebook(s) in {time.perf_counter() - t0:.1f}s")
    if failures:
        print("\n[book] notebook execution failed:\n", file=sys.stderr)
        for failure in failures:
            print(failure + "\n", file=sys.stderr)
        return 1

    stage(chapters)
    t0 = time.perf_counter()
    rc = sphinx_build()
    log(f"sphinx finished in {time.perf_counter() - t0:.1f}s with exit code {rc}")
    if rc == 0:
        log(f"book built in {time.perf_counter() - t_start:.1f}s: {HTML / 'index.html'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

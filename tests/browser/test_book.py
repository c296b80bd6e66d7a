"""The HTML book, as a reader's browser sees it.

Builds the book with the same script `make book` runs (book/build.py --jobs 2, LMLAB_PROFILE=ci,
sharing LMLAB_CACHE_DIR with the notebook tests), serves book/_build/html on 127.0.0.1 and drives
Debian's Chromium through Playwright. Every chapter page must load, show at least one decoded
figure and no error output; the navigation links must resolve; the widget explorers must render
with their figure; moving a control of each chapter's explorer (explorer_table.EXPLORERS) must
switch to another figure in the page, without a kernel; and no request may leave 127.0.0.1.
Screenshots (each explorer before and after the move) and the build log go to test-artifacts/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from explorer_table import (
    BY_NOTEBOOK,
    EXPLORERS,
    FIGURE_JS,
    ExplorerCase,
    find_explorer,
    move_control,
)

pytestmark = pytest.mark.browser

BUILD_TIMEOUT_S = int(os.environ.get("LMLAB_BOOK_BUILD_TIMEOUT", "1500"))
# Two notebooks at a time (one thread each): about twice as fast as one at a time on 2 cores.
BUILD_JOBS = os.environ.get("LMLAB_BOOK_JOBS", "2")
PAGE_TIMEOUT_MS = 60_000
FIGURE_TIMEOUT_MS = 30_000
WIDGET_TIMEOUT_MS = 60_000

ERROR_OUTPUT_SELECTOR = ".cell_output .output.stderr, .cell_output .output.traceback, .output.error"
NAV_LINK_SELECTOR = (
    "nav.bd-docs-nav a[href], .prev-next-area a[href], a.navbar-brand[href], "
    ".bd-breadcrumbs a[href]"
)
DECODED_IMAGES_JS = """
(selector) => Array.from(document.querySelectorAll(selector))
    .filter((img) => img.complete && img.naturalWidth > 0)
    .map((img) => (img.currentSrc || img.src).slice(0, 80))
"""
WIDGET_CONTROLS = (
    ".widget-dropdown select, .widget-slider, .widget-hslider, .widget-vslider, "
    ".widget-toggle-buttons, .widget-radio-box, .widget-checkbox, .widget-button, .widget-text"
)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def chapters(notebooks_dir) -> list[str]:
    found = sorted(p.stem for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        pytest.fail(f"no chapter notebooks (NN_topic.ipynb) in {notebooks_dir}: nothing to test")
    return found


@pytest.fixture(scope="module")
def book_html(repo_root, artifacts_dir, chapters) -> Path:
    """Build the book once for this module (ci profile) and return book/_build/html."""
    log = artifacts_dir / "book-build.log"
    env = dict(os.environ, LMLAB_PROFILE="ci")
    t0 = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [sys.executable, str(repo_root / "book" / "build.py"), "--jobs", BUILD_JOBS],
                cwd=repo_root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"book build did not finish in {BUILD_TIMEOUT_S}s; last lines of {log}:\n"
                + _tail(log)
            )
    seconds = time.monotonic() - t0
    print(f"book build (ci profile, {BUILD_JOBS} jobs): {seconds:.1f}s, log in {log}")
    if proc.returncode != 0:
        pytest.fail(
            f"book/build.py failed with exit code {proc.returncode} after {seconds:.0f}s "
            f"(a notebook raised, or Sphinx warned). Last lines of {log}:\n{_tail(log)}"
        )
    html = repo_root / "book" / "_build" / "html"
    missing = [c for c in chapters if not (html / f"{c}.html").exists()]
    assert not missing, f"the build produced no page for chapter(s) {missing} in {html}"
    return html


@pytest.fixture(scope="module")
def site(book_html, serve_directory) -> str:
    with serve_directory(book_html) as base_url:
        yield base_url


def _open(context, guard, url: str):
    page = context.new_page()
    guard.watch(page)
    response = page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
    assert response is not None and response.status == 200, (
        f"{url} answered {response.status if response else 'nothing'}"
    )
    return page


def _check_guard(guard, what: str) -> list[str]:
    problems = []
    external = guard.external()
    if external:
        problems.append(
            f"{what}: {len(external)} request(s) tried to leave 127.0.0.1 (the book must be "
            "fully offline; a CDN script or font?):\n    " + "\n    ".join(external[:20])
        )
    if guard.failed:
        problems.append(
            f"{what}: local resources failed to load:\n    "
            + "\n    ".join(sorted(set(guard.failed))[:20])
        )
    if guard.page_errors:
        problems.append(
            f"{what}: JavaScript errors on the page:\n    " + "\n    ".join(guard.page_errors[:20])
        )
    return problems


def test_every_chapter_page_renders(site, chapters, guarded_context, artifacts_dir):
    context, guard = guarded_context
    problems: list[str] = []
    for i, chapter in enumerate(chapters):
        url = urljoin(site, f"{chapter}.html")
        page = _open(context, guard, url)
        try:
            page.wait_for_function(
                f"() => ({DECODED_IMAGES_JS})('article img').length > 0",
                timeout=FIGURE_TIMEOUT_MS,
            )
        except Exception:
            total = page.locator("article img").count()
            problems.append(
                f"{chapter}: no decoded figure: {total} <img> in the article, none with "
                "naturalWidth > 0 (does the chapter draw a figure? did its PNG load?)"
            )
        errors = page.locator(ERROR_OUTPUT_SELECTOR)
        if errors.count():
            problems.append(
                f"{chapter}: {errors.count()} error/stderr output(s) on the page, first:\n"
                + errors.first.inner_text()[:1500]
            )
        text = page.locator("article").inner_text()
        if "Traceback" in text:
            at = text.index("Traceback")
            problems.append(f"{chapter}: a traceback is shown:\n{text[at : at + 1500]}")
        if i == 0:
            page.screenshot(path=str(artifacts_dir / "book-chapter.png"))
        page.close()
    problems += _check_guard(guard, "chapter pages")
    assert not problems, "\n\n".join(problems)


def test_navigation_links_resolve(site, chapters, guarded_context):
    context, guard = guarded_context
    pages = ["index.html", *(f"{c}.html" for c in chapters)]
    links: dict[str, str] = {}  # target -> first page linking to it
    for name in pages:
        page = _open(context, guard, urljoin(site, name))
        hrefs = page.eval_on_selector_all(
            NAV_LINK_SELECTOR, "(els) => els.map((a) => a.getAttribute('href'))"
        )
        for href in hrefs:
            target = urldefrag(urljoin(page.url, href)).url
            if urlsplit(target).netloc == urlsplit(site).netloc:
                links.setdefault(target, name)
        if name == "index.html":
            toc = {urlsplit(urljoin(page.url, h)).path.lstrip("/") for h in hrefs}
            missing = [c for c in chapters if f"{c}.html" not in toc]
            assert not missing, f"the table of contents on index.html misses chapter(s) {missing}"
        page.close()
    assert links, "found no navigation links at all (did the theme's markup change?)"
    broken = []
    for target, source in sorted(links.items()):
        status = context.request.get(target).status
        if status != 200:
            broken.append(f"{target} (linked from {source}): HTTP {status}")
    assert not broken, "broken navigation links:\n  " + "\n  ".join(broken)
    problems = _check_guard(guard, "navigation")
    assert not problems, "\n\n".join(problems)


def test_widget_explorers_render_offline(site, book_html, chapters, guarded_context, artifacts_dir):
    context, guard = guarded_context
    # The explorer's class lives in the embedded widget state until the embedder renders it.
    with_widgets = [
        c for c in chapters if "lmlab-explorer" in (book_html / f"{c}.html").read_text("utf-8")
    ]
    assert with_widgets, (
        "no chapter page embeds an lmlab explorer (a widget with class lmlab-explorer): was the "
        "widget state stored when the notebooks were executed?"
    )
    problems = []
    for i, chapter in enumerate(with_widgets):
        page = _open(context, guard, urljoin(site, f"{chapter}.html"))
        explorer = page.locator(".lmlab-explorer").first
        try:
            explorer.wait_for(state="attached", timeout=WIDGET_TIMEOUT_MS)
        except Exception:
            problems.append(
                f"{chapter}: the embedded widget state was not rendered into a .lmlab-explorer "
                "(require.js / embed-amd.js not loaded?)"
            )
            page.close()
            continue
        explorer.scroll_into_view_if_needed()
        controls = explorer.locator(WIDGET_CONTROLS)
        if controls.count() == 0:
            problems.append(f"{chapter}: the explorer rendered without any control")
        try:
            page.wait_for_function(
                f"() => ({DECODED_IMAGES_JS})('.lmlab-explorer img.lmlab-figure').length > 0",
                timeout=WIDGET_TIMEOUT_MS,
            )
        except Exception:
            problems.append(
                f"{chapter}: the explorer's figure (img.lmlab-figure) did not decode "
                f"({explorer.locator('img').count()} img in the explorer)"
            )
        if i == 0:
            page.wait_for_timeout(500)  # let fonts and layout settle for the picture
            page.screenshot(path=str(artifacts_dir / "book-widget.png"))
        page.close()
    problems += _check_guard(guard, "widget pages")
    assert not problems, "\n\n".join(problems)


def test_every_explorer_page_is_in_the_table(book_html, chapters):
    # each explorer on a page carries the class lmlab-explorer once in the embedded widget state
    shown = {
        c: (book_html / f"{c}.html").read_text("utf-8").count("lmlab-explorer") for c in chapters
    }
    tested = {c: len(BY_NOTEBOOK.get(c, [])) for c in chapters}
    untested = {
        c: f"{shown[c]} shown, {tested[c]} tested" for c in chapters if shown[c] > tested[c]
    }
    assert not untested, (
        f"explorer(s) that no browser test moves: {untested}; add a line for each to EXPLORERS "
        "in tests/browser/explorer_table.py"
    )


@pytest.mark.parametrize("case", EXPLORERS, ids=lambda c: c.id)
def test_explorer_switches_figures_offline(
    case: ExplorerCase, site, chapters, guarded_context, artifacts_dir
):
    """Move one control on the static page: another precomputed figure must show, decoded and
    different in pixels, with no request off 127.0.0.1 and no JavaScript error."""
    if case.notebook not in chapters:
        pytest.fail(f"{case.notebook}.ipynb is in EXPLORERS but not in notebooks/")
    context, guard = guarded_context
    page = _open(context, guard, urljoin(site, f"{case.notebook}.html"))
    explorer = find_explorer(page, case)
    try:
        explorer.wait_for(state="attached", timeout=WIDGET_TIMEOUT_MS)
    except Exception:
        pytest.fail(f"{case.notebook}: no rendered explorer titled {case.title!r}")
    explorer.scroll_into_view_if_needed()
    page.wait_for_function(
        f"(root) => {{ const f = ({FIGURE_JS})(root); return !!f && f.decoded; }}",
        arg=explorer.element_handle(),
        timeout=WIDGET_TIMEOUT_MS,
    )
    note = explorer.locator(".lmlab-note").inner_text()
    assert "precomputed" in note and "JupyterLab" in note, (
        f"{case.notebook}: the explorer's note does not say its settings are precomputed and "
        f"that JupyterLab runs any setting: {note!r}"
    )
    before = explorer.evaluate(FIGURE_JS)
    pixels_before = explorer.locator("img.lmlab-figure:visible").first.screenshot()
    explorer.screenshot(path=str(artifacts_dir / f"book-{case.id}-before.png"))
    moved = move_control(explorer, case)
    try:
        page.wait_for_function(
            f"([root, old]) => {{ const f = ({FIGURE_JS})(root);"
            " return !!f && f.decoded && f.src !== old; }",
            arg=[explorer.element_handle(), before["src"]],
            timeout=FIGURE_TIMEOUT_MS,
        )
    except Exception:
        explorer.screenshot(path=str(artifacts_dir / f"book-{case.id}-after.png"))
        pytest.fail(
            f"{case.notebook}: after {moved} no other figure was shown in the page; the explorer "
            f"shows: {explorer.inner_text()[:600]!r} (was the setting precomputed?)"
        )
    page.wait_for_timeout(200)  # layout of the new figure
    pixels_after = explorer.locator("img.lmlab-figure:visible").first.screenshot()
    explorer.screenshot(path=str(artifacts_dir / f"book-{case.id}-after.png"))
    assert pixels_after != pixels_before, f"{case.notebook}: after {moved} the figure is unchanged"
    problems = _check_guard(guard, f"{case.notebook} explorer")
    assert not problems, "\n\n".join(problems)

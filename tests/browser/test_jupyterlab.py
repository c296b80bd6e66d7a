"""Every chapter's explorer, run by a person in JupyterLab.

Starts one real JupyterLab server for the module (isolated config/data/runtime/settings in a temp
folder, a temp copy of notebooks/ as its root, LMLAB_PROFILE=ci). For each line of
explorer_table.EXPLORERS it opens the notebook in Debian's Chromium through Playwright, runs all
cells from the Run menu, waits for the explorer widget (.lmlab-explorer with that title), moves
the named control and checks that the figure (img.lmlab-figure) is redrawn by the kernel; a
notebook with two explorers runs once and both are moved in turn. Any error or stderr output in
any cell fails the test. Screenshots: test-artifacts/jupyterlab-<case id>-before.png and
-after.png. The notebook's kernel is shut down after each notebook, JupyterLab at the end of the
module, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from explorer_table import BY_NOTEBOOK, FIGURE_JS, ExplorerCase, find_explorer, move_control

pytestmark = pytest.mark.browser

SERVER_START_TIMEOUT_S = 120
NOTEBOOK_OPEN_TIMEOUT_MS = 120_000
RUN_ALL_TIMEOUT_S = int(os.environ.get("LMLAB_LAB_RUN_TIMEOUT", "480"))
REDRAW_TIMEOUT_MS = 180_000

# What the page says about the notebook: per code cell its prompt and any error output.
NOTEBOOK_STATE_JS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = Array.from(panel.querySelectorAll('.jp-Cell.jp-CodeCell'));
  const prompts = cells.map((c) => {
    const p = c.querySelector('.jp-InputArea-prompt');
    return p ? p.textContent.trim() : '';
  });
  const errors = [];
  cells.forEach((c, i) => {
    c.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
    ).forEach((o) => errors.push(`cell ${i + 1} (${prompts[i]}): ${o.innerText.slice(0, 2000)}`));
  });
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return {
    cells: cells.length,
    prompts,
    errors,
    kernel: indicator ? indicator.getAttribute('data-status') : null,
    explorer: panel.querySelector('.lmlab-explorer') !== null,
  };
}
"""


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_settings(settings_dir: Path) -> None:
    """User settings for the isolated JupyterLab: render every cell, no news, no update checks."""
    overrides = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for rel, value in overrides.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@contextlib.contextmanager
def jupyterlab(notebooks_dir: Path, tmp: Path, port: int, log_path: Path) -> Iterator[Lab]:
    root = tmp / "notebooks"
    shutil.copytree(notebooks_dir, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    dirs = {
        name: tmp / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipy")
    }
    for d in dirs.values():
        d.mkdir()
    _write_settings(dirs["settings"])
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.pop("JUPYTER_PATH", None)
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        IPYTHONDIR=str(dirs["ipy"]),
        JUPYTER_PLATFORM_DIRS="1",
        LMLAB_PROFILE="ci",
        PYTHONUNBUFFERED="1",
    )
    # Two notebooks run at a time (see _STARTED): share the cores between their kernels instead
    # of oversubscribing them, as the book build does.
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"JupyterLab exited with code {proc.returncode} while starting; "
                    f"last lines of {log_path}:\n{_tail(log_path)}"
                )
            with contextlib.suppress(OSError):
                if _get(f"{url}/api/status?token={token}") == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"JupyterLab did not answer on {url} within {SERVER_START_TIMEOUT_S}s; "
                    f"last lines of {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.5)
        yield Lab(url=url, token=token, root=root, log=log_path)
    finally:
        _shutdown(proc, url, token)


def _shutdown(proc: subprocess.Popen, url: str, token: str) -> None:
    """Ask the server to stop (it shuts its kernels down too); escalate if it does not."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            req = urllib.request.Request(
                f"{url}/api/shutdown",
                method="POST",
                headers={"Authorization": f"token {token}"},
            )
            urllib.request.urlopen(req, timeout=10).close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _fail_on_errors(state: dict | None, notebook: str, when: str) -> None:
    if state and state["errors"]:
        pytest.fail(
            f"{when}: {len(state['errors'])} cell(s) wrote an error or to stderr in "
            f"{notebook}:\n\n" + "\n\n".join(state["errors"][:5])
        )


def _wait_until_executed(page, lab: Lab, notebook: str, timeout_s: float) -> dict:
    """Poll until every code cell has a number and the kernel is idle; fail early on errors."""
    deadline = time.monotonic() + timeout_s
    state = None
    idle_polls = 0
    while time.monotonic() < deadline:
        state = page.evaluate(NOTEBOOK_STATE_JS)
        _fail_on_errors(state, notebook, "while running all cells")
        if state:
            done = all(p not in ("[*]:", "[ ]:", "") for p in state["prompts"])
            idle_polls = idle_polls + 1 if done and state["kernel"] == "idle" else 0
            if idle_polls >= 3:  # idle on three polls in a row: not between two cells
                return state
        page.wait_for_timeout(1000)
    pytest.fail(
        f"{notebook} did not finish running within {timeout_s:.0f}s (LMLAB_PROFILE=ci). Last "
        f"state: {json.dumps(state)[:1500]}\nServer log tail:\n{_tail(lab.log)}"
    )


KERNEL_READY_JS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return false;
  const name = panel.querySelector('.jp-KernelName');
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  return !!name && /python/i.test(name.textContent)
    && !!indicator && indicator.getAttribute('data-status') === 'idle';
}
"""


def _wait_for_kernel(page) -> None:
    try:
        page.wait_for_function(KERNEL_READY_JS, timeout=NOTEBOOK_OPEN_TIMEOUT_MS)
    except Exception:
        name = page.locator(".jp-NotebookPanel .jp-KernelName").all_inner_texts()
        pytest.fail(
            f"the notebook's Python kernel did not become idle within "
            f"{NOTEBOOK_OPEN_TIMEOUT_MS // 1000}s (kernel shown: {name})"
        )


def _run_all_cells(page) -> None:
    """Run > Run All Cells, through the menu bar as a person would (retried once if the click
    came before the notebook was ready to take it)."""
    for attempt in (1, 2):
        page.locator(".jp-NotebookPanel .jp-Cell").first.click()  # focus the notebook
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        item = page.locator('.lm-Menu-item[data-command="runmenu:run-all"]')
        item.wait_for(state="visible", timeout=10_000)
        item.click()
        try:
            page.wait_for_function(
                f"() => {{ const s = ({NOTEBOOK_STATE_JS})();"
                " return s && s.prompts.some((p) => p !== '[ ]:' && p !== ''); }",
                timeout=30_000,
            )
            return
        except Exception:
            if attempt == 2:
                pytest.fail("Run > Run All Cells did not start any cell within 30s (twice)")


# An explorer catches a failing redraw and shows "SomeError: message" in its status line.
EXPLORER_ERROR = re.compile(r"\b\w*(Error|Exception)\b: .*")


def _wait_for_redraw(page, explorer, before: str, moved: str, notebook: str, shot: Path) -> None:
    """Wait for a new, decoded figure; fail at once if the explorer or a cell reports an error."""
    handle = explorer.element_handle()
    deadline = time.monotonic() + REDRAW_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        figure = page.evaluate(FIGURE_JS, handle)
        if figure and figure["decoded"] and figure["src"] != before:
            return
        shown = explorer.inner_text()
        error = EXPLORER_ERROR.search(shown)
        state = page.evaluate(NOTEBOOK_STATE_JS)
        if error or (state and state["errors"]):
            page.screenshot(path=str(shot))
            _fail_on_errors(state, notebook, f"after moving a control ({moved})")
            pytest.fail(
                f"the explorer reported an error after {moved}: {error.group(0)!r} "
                f"(screenshot: {shot})"
            )
        page.wait_for_timeout(500)
    page.screenshot(path=str(shot))
    pytest.fail(
        f"the figure was not redrawn within {REDRAW_TIMEOUT_MS // 1000}s after {moved} "
        f"(img.lmlab-figure src unchanged). The explorer shows: {explorer.inner_text()[:800]!r}; "
        f"screenshot: {shot}"
    )


@dataclass
class LabRun:
    """One notebook opened in its own browser context, its cells started with Run All."""

    notebook: str
    context: object
    page: object
    page_errors: list[str]
    started: float


@pytest.fixture(scope="module")
def lab(notebooks_dir, tmp_path_factory, get_free_port, artifacts_dir) -> Iterator[Lab]:
    """One JupyterLab server for every explorer of the module."""
    log_path = artifacts_dir / "jupyterlab-server.log"
    tmp = tmp_path_factory.mktemp("lab")
    with jupyterlab(notebooks_dir, tmp, get_free_port(), log_path) as server:
        yield server
        for run in _STARTED.values():  # started ahead for a case that was deselected
            run.context.close()
        _STARTED.clear()


# Notebooks started ahead: while one case waits for its notebook, the next one already runs
# (two kernels at a time, as the book build runs two notebooks; their waits overlap).
_STARTED: dict[str, LabRun] = {}


def _start(browser, lab: Lab, notebook: str) -> LabRun:
    """Open ``notebook`` in a fresh context and workspace of its own and Run All Cells."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # The lab talks to its own server only; anything else is blocked, not waited on.
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith((lab.url, "data:", "blob:"))
            else route.abort()
        ),
    )
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    workspace = notebook.removesuffix(".ipynb")
    page.goto(
        f"{lab.url}/lab/workspaces/{workspace}/tree/{notebook}?token={lab.token}&reset",
        wait_until="domcontentloaded",
        timeout=NOTEBOOK_OPEN_TIMEOUT_MS,
    )
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(
        state="visible", timeout=NOTEBOOK_OPEN_TIMEOUT_MS
    )
    _wait_for_kernel(page)
    _run_all_cells(page)
    return LabRun(notebook, context, page, page_errors, time.monotonic())


def _shutdown_kernel(lab: Lab, notebook: str) -> None:
    """Stop the kernel of ``notebook``'s session (and only it), freeing its memory."""
    headers = {"Authorization": f"token {lab.token}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{lab.url}/api/sessions", headers=headers), timeout=10
    ) as resp:
        sessions = json.load(resp)
    for session in sessions:
        if session.get("path", "").endswith(notebook):
            req = urllib.request.Request(
                f"{lab.url}/api/sessions/{session['id']}", method="DELETE", headers=headers
            )
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(req, timeout=30).close()


@pytest.mark.parametrize("stem", list(BY_NOTEBOOK))
def test_explorer_redraws_in_jupyterlab(stem: str, lab: Lab, browser, notebooks_dir, artifacts_dir):
    """Run the notebook, then move one control of each of its explorers in turn: each figure must
    redraw, with no error output and no JavaScript error."""
    notebook = f"{stem}.ipynb"
    if not (notebooks_dir / notebook).exists():
        pytest.fail(f"{notebooks_dir / notebook} does not exist, yet it is in EXPLORERS")
    failure_shot = artifacts_dir / f"jupyterlab-{stem}-failure.png"
    run = _STARTED.pop(notebook, None) or _start(browser, lab, notebook)
    try:
        stems = list(BY_NOTEBOOK)
        following = next((f"{s}.ipynb" for s in stems[stems.index(stem) + 1 :]), None)
        if following and following not in _STARTED and (notebooks_dir / following).exists():
            _STARTED[following] = _start(browser, lab, following)
        page = run.page
        state = _wait_until_executed(page, lab, notebook, RUN_ALL_TIMEOUT_S)
        print(
            f"{notebook}: run all cells: {state['cells']} code cells in "
            f"{time.monotonic() - run.started:.1f}s"
        )
        for case in BY_NOTEBOOK[stem]:
            _move_and_check(case, run, lab, notebook, artifacts_dir, failure_shot)
    finally:
        run.context.close()
        _shutdown_kernel(lab, notebook)


def _move_and_check(
    case: ExplorerCase, run: LabRun, lab: Lab, notebook: str, artifacts_dir, failure_shot
) -> None:
    """Move ``case``'s control in the running notebook and check that its figure redraws."""
    page = run.page
    explorer = find_explorer(page, case, ".jp-NotebookPanel:not(.lm-mod-hidden)")
    try:
        # JupyterLab renders cells lazily: wait for the widget to exist, then bring it in view
        explorer.wait_for(state="attached", timeout=30_000)
    except Exception:
        pytest.fail(
            f"{notebook} ran without errors but no widget with class lmlab-explorer and "
            f"title {case.title!r} appeared (is the explorer displayed as a cell's output? "
            "is the @jupyter-widgets/jupyterlab-manager extension loaded?)"
        )
    explorer.scroll_into_view_if_needed()
    explorer.locator("img.lmlab-figure").first.wait_for(state="visible", timeout=30_000)
    before = page.evaluate(FIGURE_JS, explorer.element_handle())
    assert before and before["src"], "img.lmlab-figure has no src before the control moved"
    page.screenshot(path=str(artifacts_dir / f"jupyterlab-{case.id}-before.png"))

    moved = move_control(explorer, case)
    _wait_for_redraw(page, explorer, before["src"], moved, notebook, failure_shot)
    _wait_until_executed(page, lab, notebook, 120)
    explorer.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts_dir / f"jupyterlab-{case.id}-after.png"))
    _fail_on_errors(page.evaluate(NOTEBOOK_STATE_JS), notebook, f"after {moved}")
    status = EXPLORER_ERROR.search(explorer.inner_text())
    assert status is None, (
        f"{case.title}: the explorer shows an error after {moved}: {status.group(0)!r}"
    )
    assert not run.page_errors, "JavaScript errors in JupyterLab:\n" + "\n".join(run.page_errors)

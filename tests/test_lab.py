"""`make lab`: the command line it runs, and the server it starts, really serve the workbook.

The integration test runs `make lab` itself (the flags the Makefile gives), in an isolated Jupyter
data/runtime/config folder, without a display, checks the printed URL answers and serves the
quickstart, then stops the server. It also runs a cell in both kernels a learner can pick: the
notebooks' own "python3" (the environment JupyterLab runs in) and the "Python (lmlab)" kernel that
`make lab` registers for other JupyterLabs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LAB_SCRIPT = ROOT / "tools" / "lab.py"
URL_LINE = re.compile(r"^(http://\S+/lab/tree/00_quickstart\.ipynb\?token=\S+)$")
START_TIMEOUT_S = 180


def load_lab_module():
    spec = importlib.util.spec_from_file_location("lmlab_tools_lab", LAB_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("is_root", [True, False])
@pytest.mark.parametrize("display", [True, False])
def test_lab_command_flags(is_root, display):
    lab = load_lab_module()
    cmd = lab.lab_command(["--port=9999"], is_root=is_root, display=display)
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert ("--allow-root" in cmd) == is_root
    assert ("--no-browser" in cmd) == (not display)
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in cmd
    assert "--LabApp.default_url=/lab/tree/00_quickstart.ipynb" in cmd
    assert cmd[-1] == "--port=9999"  # the learner's flags come last, so they override


def test_has_display_reads_the_environment(monkeypatch):
    lab = load_lab_module()
    monkeypatch.setattr(lab.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not lab.has_display()
    monkeypatch.setenv("DISPLAY", ":0")
    assert lab.has_display()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (localhost only)
        return response.status, response.read()


def _run_cell(kernel_name: str, tmp_path: Path) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import sys, lmlab\nprint(sys.prefix)"))
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()


@pytest.fixture
def jupyter_home(tmp_path, monkeypatch):
    """Jupyter's data, runtime and config folders inside tmp_path (nothing leaks into ~)."""
    for var, sub in [("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTER_CONFIG_DIR", "config")]:
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return tmp_path


def test_make_lab_serves_the_workbook(jupyter_home):
    if not (Path(sys.prefix) / ".installed").exists():
        pytest.skip("make lab's environment (.venv bootstrapped by `make install`) is not the "
                    "one running the tests")
    port = _free_port()
    cmd = ["make", "-s", "-C", str(ROOT), "lab", f"VENV={sys.prefix}",
           f"LAB_ARGS=--ServerApp.port={port} --ServerApp.port_retries=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=os.environ.copy())
    lines: list[str] = []
    found: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            match = URL_LINE.match(line.strip())
            if match:
                found.append(match.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not found and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        log = "\n".join(lines[-40:])
        assert found, f"make lab printed no workbook URL (exit {proc.poll()}):\n{log}"
        url = found[0]
        assert f"127.0.0.1:{port}" in url or f"localhost:{port}" in url, url
        assert "Running as root is not recommended" not in log
        base, token = url.split("/lab/tree/")[0], url.split("token=")[1]
        status, _ = _get(f"{base}/api/status?token={token}")
        assert status == 200
        status, body = _get(f"{base}/api/contents/00_quickstart.ipynb?content=0&token={token}")
        assert status == 200 and json.loads(body)["type"] == "notebook"
        status, body = _get(f"{base}/api/kernelspecs?token={token}")
        specs = json.loads(body)["kernelspecs"]
        assert "python3" in specs and "lmlab" in specs, sorted(specs)
        assert specs["lmlab"]["spec"]["display_name"] == "Python (lmlab)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    # Both kernels a learner may pick run the workbook's code in this environment.
    for kernel in ("python3", "lmlab"):
        assert Path(_run_cell(kernel, jupyter_home)).resolve() == Path(sys.prefix).resolve()


def test_notebooks_name_the_kernel_make_lab_provides():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        spec = json.loads(path.read_text(encoding="utf-8"))["metadata"]["kernelspec"]
        assert spec["name"] == "python3", f"{path.name}: kernel {spec['name']!r}"

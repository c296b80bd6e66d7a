"""Start JupyterLab on the workbook: what `make lab` runs.

    python tools/lab.py [JUPYTER FLAGS ...]

- serves ``notebooks/`` and opens on the quickstart;
- passes ``--allow-root`` only when running as root (containers, cloud VMs, hosted services),
  where Jupyter otherwise refuses to start;
- opens no browser where there is no display to open one on (Linux without ``DISPLAY`` or
  ``WAYLAND_DISPLAY``), and in every case prints the URL with its token as one plain line once
  the server answers, so it can be copied;
- any further flags go to JupyterLab unchanged (``--port=8899``, ``--ServerApp.ip=0.0.0.0``).

Stopping it (Ctrl-C) stops the server; the exit status is the server's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIRST_NOTEBOOK = "00_quickstart.ipynb"
START_TIMEOUT_S = 120.0


def has_display() -> bool:
    """Whether a browser window could be opened here (macOS and Windows always can)."""
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def lab_command(extra: list[str], *, is_root: bool, display: bool) -> list[str]:
    """The JupyterLab command line `make lab` runs (``extra`` last, so it can override)."""
    cmd = [sys.executable, "-m", "jupyterlab",
           f"--ServerApp.root_dir={NOTEBOOKS}",
           f"--LabApp.default_url=/lab/tree/{FIRST_NOTEBOOK}"]
    if is_root:
        cmd.append("--allow-root")
    if not display:
        cmd.append("--no-browser")
    return cmd + extra


def server_info(pid: int) -> dict | None:
    """The running server's own description (url, token, ...), once it has written it."""
    path = Path(jupyter_runtime_dir()) / f"jpserver-{pid}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def answers(info: dict) -> bool:
    """Whether the server answers HTTP yet (its start-up log is then written)."""
    url = info["url"].rstrip("/") + "/api/status"
    if info.get("token"):
        url += f"?token={info['token']}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (its own server)
            return response.status == 200
    except OSError:
        return False


def workbook_url(info: dict) -> str:
    url = info["url"].rstrip("/") + f"/lab/tree/{FIRST_NOTEBOOK}"
    token = info.get("token")
    return f"{url}?token={token}" if token else url


def main(argv: list[str]) -> int:
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    cmd = lab_command(argv, is_root=is_root, display=has_display())
    server = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        info = None
        ready = False
        while not ready and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
            info = info or server_info(server.pid)
            ready = info is not None and answers(info)
        if ready:
            time.sleep(1.0)  # let the extensions' start-up lines go first: the URL is printed last
            print(f"\nThe workbook is served at (open or copy this URL):\n{workbook_url(info)}",
                  flush=True)
        elif server.poll() is None:
            print(f"JupyterLab did not report its URL within {START_TIMEOUT_S:.0f} s; "
                  "look for it in the log above.", file=sys.stderr, flush=True)
        return server.wait()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the server too; make sure it is gone before returning.
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
        try:
            return server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            return server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

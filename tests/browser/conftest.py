"""Shared pieces of the browser tests: Debian's Chromium through Playwright, a local static
server, and a network guard that keeps every request on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
LOCAL_SCHEMES = {"data", "blob", "about"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def get_free_port():
    """A function returning a free TCP port on 127.0.0.1."""
    return free_port


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOCAL_HOSTS


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = os.environ.get("LMLAB_CHROMIUM", "/usr/bin/chromium")
    if Path(path).exists() or shutil.which(path):
        return path
    msg = (
        f"Chromium not found at {path}: install Debian's chromium (apt-get install chromium) "
        "or point LMLAB_CHROMIUM at a Chromium binary."
    )
    if os.environ.get("CI"):
        pytest.fail(msg)  # CI installs it (.ci/run): a missing browser there is a real failure
    pytest.skip(msg)


@pytest.fixture(scope="session")
def browser(chromium_executable):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_executable, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@dataclass
class NetworkGuard:
    """Records what a browser context does; aborts anything that would leave this machine."""

    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # local responses >= 400, failed loads
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, context) -> None:
        context.route("**/*", self._route)
        context.on("request", lambda req: self.requests.append(req.url))
        context.on("requestfailed", self._request_failed)
        context.on("response", self._response)

    def watch(self, page) -> None:
        page.on("pageerror", lambda err: self.page_errors.append(f"{page.url}: {err}"))
        page.on(
            "console",
            lambda msg: (
                self.console_errors.append(f"{page.url}: {msg.text}")
                if msg.type == "error"
                else None
            ),
        )

    def _route(self, route) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def _request_failed(self, request) -> None:
        if is_local(request.url) and not request.url.startswith(("data:", "blob:")):
            self.failed.append(f"{request.url} ({request.failure})")

    def _response(self, response) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.failed.append(f"{response.url} (HTTP {response.status})")

    def external(self) -> list[str]:
        """Every request that was (or would have been) sent off 127.0.0.1."""
        return sorted(set(self.blocked) | {u for u in self.requests if not is_local(u)})


@pytest.fixture
def guarded_context(browser) -> Iterator[tuple[object, NetworkGuard]]:
    guard = NetworkGuard()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    guard.attach(context)
    try:
        yield context, guard
    finally:
        context.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture(scope="session")
def serve_directory():
    """`with serve_directory(path) as base_url:` serves path over HTTP on 127.0.0.1."""
    return _serve_directory


@contextlib.contextmanager
def _serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 at a free port, in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="book-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

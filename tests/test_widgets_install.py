"""ipywidgets 8 and its JupyterLab extension are installed together and agree.

Widgets that print "Error displaying widget: model not found" in JupyterLab almost always mean
the Python package (ipywidgets) and the front-end extension (@jupyter-widgets/jupyterlab-manager,
shipped by the jupyterlab_widgets package) do not match. These tests say which side is off.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

EXTENSION = "@jupyter-widgets/jupyterlab-manager"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _requirement_on(dist: str, name: str) -> Requirement:
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.name.replace("-", "_").lower() == name and not req.marker:
            return req
    pytest.fail(f"{dist} {md.version(dist)} declares no requirement on {name}")


def _shipped_package_json() -> Path:
    """The extension's package.json as installed by the jupyterlab_widgets distribution."""
    dist = md.distribution("jupyterlab_widgets")
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(f"labextensions/{EXTENSION}/package.json"):
            return Path(dist.locate_file(f)).resolve()
    pytest.fail(f"jupyterlab_widgets {dist.version} does not ship {EXTENSION}'s package.json")


@pytest.fixture(scope="module")
def labextension_line() -> str:
    """`jupyter labextension list`'s line for the widgets manager (colour codes removed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"`jupyter labextension list` failed:\n{out}"
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(EXTENSION + " ")]
    assert lines, f"{EXTENSION} is not among JupyterLab's extensions:\n{out}"
    assert len(lines) == 1, f"{EXTENSION} is installed more than once (one shadows another):\n{out}"
    return lines[0]


def test_ipywidgets_is_version_8():
    version = Version(md.version("ipywidgets"))
    assert version.major == 8, f"lmlab's widgets need ipywidgets 8, found {version}"


def test_installed_jupyterlab_widgets_satisfies_ipywidgets():
    req = _requirement_on("ipywidgets", "jupyterlab_widgets")
    installed = md.version("jupyterlab_widgets")
    assert req.specifier.contains(installed, prereleases=True), (
        f"ipywidgets {md.version('ipywidgets')} requires {req}, but jupyterlab_widgets "
        f"{installed} is installed: `pip install -U ipywidgets jupyterlab_widgets`"
    )


def test_widgets_extension_enabled_and_ok(labextension_line):
    words = labextension_line.split()
    assert "enabled" in words, f"{EXTENSION} is not enabled: {labextension_line!r}"
    assert "OK" in words, f"JupyterLab reports a problem with {EXTENSION}: {labextension_line!r}"
    assert "jupyterlab_widgets" in labextension_line, (
        f"{EXTENSION} is not the copy installed by the jupyterlab_widgets package: "
        f"{labextension_line!r}"
    )


def test_widgets_extension_version_is_the_one_jupyterlab_widgets_ships(labextension_line):
    shipped_json = _shipped_package_json()
    shipped = json.loads(shipped_json.read_text(encoding="utf-8"))
    listed = re.search(r"\sv(\d+\.\d+\.\d+\S*)", labextension_line)
    assert listed, f"no version in {labextension_line!r}"
    assert Version(listed.group(1)) == Version(shipped["version"]), (
        f"JupyterLab loads {EXTENSION} v{listed.group(1)}, but jupyterlab_widgets "
        f"{md.version('jupyterlab_widgets')} ships v{shipped['version']} ({shipped_json}): "
        "another copy (user or system data dir) shadows it"
    )
    # jupyterlab_widgets 3.x ships the 5.x extension, the one that speaks ipywidgets 8's protocol.
    assert Version(md.version("jupyterlab_widgets")).major == 3
    assert Version(shipped["version"]).major == 5, shipped["version"]


def test_widgets_extension_supports_this_jupyterlab():
    shipped = json.loads(_shipped_package_json().read_text(encoding="utf-8"))
    wanted = shipped.get("dependencies", {}).get("@jupyterlab/application", "")
    lab_major = Version(md.version("jupyterlab")).major
    majors = {int(m) for m in re.findall(r"\^(\d+)", wanted)}
    assert lab_major in majors, (
        f"{EXTENSION} {shipped['version']} is built for @jupyterlab/application {wanted!r}, "
        f"but JupyterLab {md.version('jupyterlab')} is installed"
    )

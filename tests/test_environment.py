"""pyproject.toml and environment.yml must describe the same environment.

Both files list the same packages with the same bounds (lower and, where given, upper).
conda-forge spells a few names differently (ALIASES); a few conda packages have no pip
counterpart and are allowed in environment.yml only (CONDA_ONLY).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"

# conda-forge name -> PyPI name
ALIASES = {"pytorch": "torch"}
# conda packages that are part of the environment but not Python dependencies of lmlab
CONDA_ONLY = {"python", "pip", "nodejs"}

Reqs = dict[str, SpecifierSet]


def normalize(name: str) -> str:
    """PEP 503 name normalization, with conda-forge aliases mapped to PyPI names."""
    name = re.sub(r"[-_.]+", "-", name).lower()
    return ALIASES.get(name, name)


def _merge(reqs: Reqs, name: str, spec: SpecifierSet) -> None:
    reqs[name] = reqs.get(name, SpecifierSet()) & spec


def pyproject_requirements(path: Path = PYPROJECT) -> Reqs:
    """Core dependencies plus every extra, merged per package (self-references skipped)."""
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    own = normalize(project["name"])
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    reqs: Reqs = {}
    for line in lines:
        req = Requirement(line)
        if normalize(req.name) == own:
            continue
        _merge(reqs, normalize(req.name), req.specifier)
    return reqs


_CONDA_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$")


def parse_conda_spec(spec: str) -> tuple[str, SpecifierSet]:
    """`name>=1.2,<2` (conda match spec, version part only) -> (name, SpecifierSet)."""
    spec = spec.split("#", 1)[0].strip()
    match = _CONDA_SPEC.match(spec)
    if not match:
        raise ValueError(f"cannot parse conda spec {spec!r}")
    name, version = match.groups()
    version = version.replace(" ", "")
    if version.startswith("=") and not version.startswith("=="):
        # conda's fuzzy `=3.11` means 3.11.*
        version = "==" + version[1:] + ("" if version.endswith("*") else ".*")
    return normalize(name), SpecifierSet(version)


def environment_requirements(path: Path = ENVIRONMENT) -> tuple[Reqs, Reqs]:
    """(Python dependencies, conda-only entries) from environment.yml, pip section included."""
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    reqs: Reqs = {}
    conda_only: Reqs = {}
    for item in env.get("dependencies", []):
        if isinstance(item, dict):
            for line in item.get("pip", []):
                line = line.strip()
                if line.startswith("-"):  # `-e .`, `--index-url ...`: not a requirement
                    continue
                req = Requirement(line)
                _merge(reqs, normalize(req.name), req.specifier)
            continue
        name, spec = parse_conda_spec(str(item))
        _merge(conda_only if name in CONDA_ONLY else reqs, name, spec)
    return reqs, conda_only


def _bounds(spec: SpecifierSet) -> tuple[Version | None, Version | None]:
    """(lower bound, upper bound) of a specifier set; None where there is none."""
    lower: Version | None = None
    upper: Version | None = None
    for s in spec:
        text = s.version.removesuffix(".*")
        if not text:
            continue
        v = Version(text)
        if s.operator in (">=", ">", "==", "~=", "==="):
            lower = v if lower is None else max(lower, v)
        if s.operator in ("<", "<="):
            upper = v if upper is None else min(upper, v)
    return lower, upper


def _show(v: Version | None) -> str:
    return "none" if v is None else str(v)


def compare(pyproject: Reqs, environment: Reqs) -> list[str]:
    """Every disagreement between the two requirement maps, one readable line each."""
    problems = []
    for name in sorted(pyproject.keys() - environment.keys()):
        problems.append(
            f"{name}: in pyproject.toml ({pyproject[name] or 'any version'}) "
            "but missing from environment.yml"
        )
    for name in sorted(environment.keys() - pyproject.keys()):
        problems.append(
            f"{name}: in environment.yml ({environment[name] or 'any version'}) "
            "but missing from pyproject.toml"
        )
    for name in sorted(pyproject.keys() & environment.keys()):
        (plo, pup), (elo, eup) = _bounds(pyproject[name]), _bounds(environment[name])
        if plo != elo:
            problems.append(
                f"{name}: lower bound differs: pyproject.toml {_show(plo)}, "
                f"environment.yml {_show(elo)}"
            )
        if pup != eup:
            problems.append(
                f"{name}: upper bound differs: pyproject.toml {_show(pup)}, "
                f"environment.yml {_show(eup)}"
            )
    return problems


# --------------------------------------------------------------------------------------------


def test_pyproject_and_environment_agree():
    problems = compare(pyproject_requirements(), environment_requirements()[0])
    assert not problems, "pyproject.toml and environment.yml disagree:\n  " + "\n  ".join(problems)


def test_parsers_see_the_real_files():
    """Guard against a parser that silently returns nothing (and so always 'agrees')."""
    py = pyproject_requirements()
    env, conda_only = environment_requirements()
    for name in ("torch", "numpy", "ipywidgets", "jupyterlab", "pytest", "sphinx"):
        assert name in py, f"{name} not found in pyproject.toml's dependencies"
        assert name in env, f"{name} not found in environment.yml"
    assert _bounds(py["torch"])[0] == Version("2.3")
    assert _bounds(py["ipywidgets"]) == (Version("8.1"), Version("9"))
    assert "python" in conda_only, "environment.yml should pin python"


def test_environment_python_satisfies_requires_python():
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requires = SpecifierSet(project["requires-python"])
    _, conda_only = environment_requirements()
    lower, _ = _bounds(conda_only["python"])
    assert lower is not None and lower in requires, (
        f"environment.yml's python {lower} does not satisfy requires-python {requires}"
    )


def test_compare_reports_missing_and_mismatched_packages():
    py = {
        "torch": SpecifierSet(">=2.3"),
        "numpy": SpecifierSet(">=1.26"),
        "ipywidgets": SpecifierSet(">=8.1,<9"),
        "tqdm": SpecifierSet(">=4.66"),
    }
    env = {
        "torch": SpecifierSet(">=2.4"),  # different lower bound
        "ipywidgets": SpecifierSet(">=8.1"),  # upper bound dropped
        "tqdm": SpecifierSet(">=4.66.0"),  # same bound, spelled differently
        "ruff": SpecifierSet(),  # only in environment.yml
    }  # numpy missing from environment.yml
    problems = compare(py, env)
    joined = "\n".join(problems)
    assert len(problems) == 4, joined
    assert any(p.startswith("numpy:") and "missing from environment.yml" in p for p in problems)
    assert any(p.startswith("ruff:") and "missing from pyproject.toml" in p for p in problems)
    assert any(p.startswith("torch:") and "2.3" in p and "2.4" in p for p in problems)
    assert any(p.startswith("ipywidgets:") and "upper bound" in p for p in problems)
    assert compare(py, dict(py)) == []


def test_conda_spec_parsing():
    assert parse_conda_spec("pytorch>=2.3") == ("torch", SpecifierSet(">=2.3"))
    assert parse_conda_spec("jupyterlab >=4.2, <5") == ("jupyterlab", SpecifierSet(">=4.2,<5"))
    assert parse_conda_spec("jupyterlab_widgets>=3.0,<4")[0] == "jupyterlab-widgets"
    assert parse_conda_spec("python=3.11") == ("python", SpecifierSet("==3.11.*"))
    assert parse_conda_spec("ruff  # linter") == ("ruff", SpecifierSet())

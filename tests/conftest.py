"""Fixtures shared by all tests. Keep it small: module-specific fixtures live with their tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lmlab.data import CharTokenizer, Corpus

ROOT = Path(__file__).resolve().parents[1]

# Tests default to the small `ci` profile and to the corpus in ../shared/data when it is there
# (the Makefile and .ci/run set both too; this covers a bare `pytest`).
os.environ.setdefault("LMLAB_PROFILE", "ci")
_SHARED_DATA = ROOT.parent / "shared" / "data"
if "LMLAB_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["LMLAB_DATA_DIR"] = str(_SHARED_DATA)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def notebooks_dir() -> Path:
    """The chapter notebooks (LMLAB_NOTEBOOKS_DIR overrides, to try tests on other notebooks)."""
    return Path(os.environ.get("LMLAB_NOTEBOOKS_DIR", ROOT / "notebooks")).resolve()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """test-artifacts/ (gitignored): screenshots and logs a person can look at after a run."""
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_corpus() -> Corpus:
    """A repeated English sentence as a corpus: 7,000 training and about 1,800 validation
    characters, small enough that a one-layer model learns it in a few steps."""
    text = "to be or not to be, that is the question. " * 210
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    return Corpus("tiny", tok, ids[:7000], ids[7000:])

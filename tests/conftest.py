"""Fixtures shared by all tests. Keep it small: module-specific fixtures live with their tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.data import CharTokenizer, Corpus, char_corpus
from lmlab.model import Transformer

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


@pytest.fixture(scope="session")
def shakespeare() -> Corpus:
    """Tiny Shakespeare, read once per session: the training-loop tests (``test_train``,
    ``test_compile_and_fp16``, ``test_cuda``) train on real text."""
    return char_corpus("tinyshakespeare")


@pytest.fixture(scope="session")
def shakespeare_model(shakespeare):
    """``shakespeare_model(seed=0, **fields)``: a Transformer over Tiny Shakespeare's vocabulary
    (unless ``vocab_size`` is given) with the given ModelConfig fields, built right after
    ``torch.manual_seed(seed)``, so one seed gives one set of weights. Each test module binds
    its own shape."""

    def build(seed: int = 0, **fields) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(ModelConfig(**{"vocab_size": shakespeare.tokenizer.vocab_size,
                                          **fields}))

    return build

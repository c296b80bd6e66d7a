"""Corpus loading, tokenizer and batch sampling."""

import hashlib
from pathlib import Path

import pytest
import torch

from lmlab import data
from lmlab.data import BatchSampler, CharTokenizer, char_corpus, load_text, split

SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_load_text_is_tiny_shakespeare():
    text = load_text("tinyshakespeare")
    assert len(text) == 1_115_394
    assert hashlib.sha256(text.encode()).hexdigest() == SHA
    assert text.startswith("First Citizen:")


def test_missing_corpus_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as err:
        load_text("tinyshakespeare")
    message = str(err.value)
    assert "tinyshakespeare.txt" in message and str(tmp_path / "empty") in message


def test_corrupt_file_is_rejected_by_checksum(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="sha256"):
        load_text("tinyshakespeare")


def serve_download(monkeypatch, payload: bytes) -> None:
    """Make lmlab's download receive ``payload`` instead of reaching the network."""

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return payload

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *args, **kwargs: Response())


def test_download_path_verifies_and_caches(tmp_path, monkeypatch):
    source = Path(data.corpus_path()).read_bytes()
    monkeypatch.delenv("LMLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))

    serve_download(monkeypatch, source)
    path = data.corpus_path()
    assert path == tmp_path / "data" / "tinyshakespeare.txt"
    assert path.read_bytes() == source
    assert not list(path.parent.glob("*.part"))  # no temp files left behind


def test_tokenizer_round_trip_and_specials():
    text = load_text()
    tok = CharTokenizer.from_text(text)
    assert tok.n_chars == 65
    assert tok.vocab_size == 69
    sample = text[:5000]
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.encode("\n !") == [0, 1, 2]  # sorted order: newline, space, '!'
    assert {tok.pad_id, tok.mask_id, tok.cls_id, tok.sep_id} == set(range(65, 69))
    ids = torch.tensor([0, 64, 65, 68])
    assert tok.is_special(ids).tolist() == [False, False, True, True]
    assert CharTokenizer.from_state_dict(tok.state_dict()).itos == tok.itos


def test_unknown_character_error_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 2"):
        tok.encode("abz")


def test_split_is_first_90_percent():
    ids = torch.arange(1000)
    train, val = split(ids)
    assert torch.equal(train, ids[:900]) and torch.equal(val, ids[900:])


def test_char_corpus_shapes():
    c = char_corpus("tinyshakespeare")
    total = len(c.train) + len(c.val)
    assert total == 1_115_394
    assert len(c.train) == int(total * 0.9)
    assert c.train.dtype == torch.long
    sub = c.subset(0.1)
    assert len(sub.train) == int(len(c.train) * 0.1) and torch.equal(sub.val, c.val)


def test_batch_sampler_targets_are_shifted_windows():
    data_ = torch.arange(500)
    s = BatchSampler(data_, block_size=16, batch_size=8, generator=torch.Generator().manual_seed(0))
    x, y = s.sample()
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)  # consecutive integers: y is x shifted by one
    assert int(y.max()) <= 499


def test_batch_sampler_is_seeded():
    d = torch.arange(1000)
    a = BatchSampler(d, 8, 4, generator=torch.Generator().manual_seed(3)).sample()[0]
    b = BatchSampler(d, 8, 4, generator=torch.Generator().manual_seed(3)).sample()[0]
    assert torch.equal(a, b)


def test_batch_sampler_rejects_too_little_data():
    with pytest.raises(ValueError, match="block_size=16"):
        BatchSampler(torch.arange(10), block_size=16, batch_size=2)


def test_data_dir_without_the_file_is_an_error_not_a_download(tmp_path, monkeypatch):
    """Before the fix an LMLAB_DATA_DIR without the file fell through to a network download."""
    (tmp_path / "cache" / "data").mkdir(parents=True)
    (tmp_path / "cache" / "data" / "tinyshakespeare.txt").write_text("a cached copy")
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("LMLAB_DATA_DIR is set: nothing may be downloaded")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError) as err:
        data.corpus_path("tinyshakespeare")
    message = str(err.value)
    assert str(tmp_path / "mine") in message and "tinyshakespeare.txt" in message


def test_bad_download_names_no_deleted_file_and_leaves_nothing(tmp_path, monkeypatch):
    """Before the fix the checksum error named the temporary .part file it had just deleted."""
    monkeypatch.delenv("LMLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))

    serve_download(monkeypatch, b"not shakespeare at all")
    with pytest.raises(ValueError, match="sha256") as err:
        data.corpus_path("tinyshakespeare")
    message = str(err.value)
    assert data.SOURCES["tinyshakespeare"].url in message and "nothing was saved" in message
    assert ".part" not in message and str(tmp_path) not in message
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []

"""Corpora, the character tokenizer, train/validation splits and on-device batch sampling.

Data flows: ``load_text`` -> ``CharTokenizer`` -> ``Corpus`` (train/val token tensors) ->
``BatchSampler`` (random windows, drawn on the device the model lives on).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .paths import atomic_write, cache_dir


@dataclass(frozen=True)
class TextSource:
    filename: str
    url: str
    sha256: str
    size: int


SOURCES = {
    "tinyshakespeare": TextSource(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(path: Path, source: TextSource) -> Path:
    digest = _sha256(path)
    if digest != source.sha256:
        raise ValueError(
            f"{path} does not match the expected sha256 of {source.filename} "
            f"(got {digest[:12]}..., expected {source.sha256[:12]}...). It may be truncated or a "
            f"different file: delete it and let lmlab download it again, or replace it with a copy "
            f"from {source.url}."
        )
    return path


def _download(source: TextSource, dest: Path) -> Path:
    """Fetch ``source.url``, check its sha256 in memory, then write ``dest`` atomically: a
    failed or wrong download leaves nothing behind."""
    with urllib.request.urlopen(source.url, timeout=30) as response:
        content = response.read()
    digest = hashlib.sha256(content).hexdigest()
    if digest != source.sha256:
        raise ValueError(
            f"the download of {source.filename} from {source.url} does not match the expected "
            f"sha256 (got {digest[:12]}..., expected {source.sha256[:12]}...; "
            f"{len(content):,} bytes, expected {source.size:,}); nothing was saved. Try again, or "
            f"save a good copy as {source.filename} in $LMLAB_DATA_DIR.")
    with atomic_write(dest) as out:
        out.write(content)
    return dest


def corpus_path(name: str = "tinyshakespeare", *, download: bool = True) -> Path:
    """Path of a corpus file: ``$LMLAB_DATA_DIR``, else the cache, else downloaded (checksummed)."""
    if name not in SOURCES:
        raise ValueError(f"unknown corpus {name!r}: expected one of {', '.join(SOURCES)}.")
    source = SOURCES[name]
    data_dir = os.environ.get("LMLAB_DATA_DIR")
    if data_dir:  # a folder named on purpose: it must hold the file, no silent download instead
        folder = Path(data_dir).expanduser()
        candidate = folder / source.filename
        if not candidate.is_file():
            raise FileNotFoundError(
                f"LMLAB_DATA_DIR={data_dir!r} is set, but {folder} holds no {source.filename}. "
                f"Save {source.url} there as {source.filename}, or unset LMLAB_DATA_DIR to use "
                f"the cache ({cache_dir() / 'data'}) and download it once.")
        return _verified(candidate, source)
    cached = cache_dir() / "data" / source.filename
    if cached.exists():
        return _verified(cached, source)
    if not download:
        raise FileNotFoundError(
            f"{source.filename} is not in LMLAB_DATA_DIR nor in {cached.parent}.")
    try:
        return _download(source, cached)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        where = "a folder named by $LMLAB_DATA_DIR"
        raise FileNotFoundError(
            f"Could not find or download the {name} corpus ({err}). Download {source.url} "
            f"and save it as {source.filename} in {where}, or in {cached.parent}."
        ) from err


def load_text(name: str = "tinyshakespeare") -> str:
    """The corpus as one string (Tiny Shakespeare: 1,115,394 characters, 65 distinct)."""
    return corpus_path(name).read_text(encoding="utf-8")


SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[CLS]", "[SEP]")


class CharTokenizer:
    """One token per character, plus special tokens for the pretraining objectives.

    Characters get ids ``0 .. n_chars-1`` in sorted order (so Tiny Shakespeare's 65 characters keep
    the ids other char-level models use); ``[PAD] [MASK] [CLS] [SEP]`` follow them.
    """

    def __init__(self, chars: list[str] | str, specials: tuple[str, ...] = SPECIAL_TOKENS):
        chars = sorted(set(chars))
        clash = [s for s in specials if s in chars]
        if clash:
            raise ValueError(f"special tokens {clash} collide with characters of the text.")
        self.chars: list[str] = chars
        self.specials: tuple[str, ...] = tuple(specials)
        self.itos: list[str] = chars + list(specials)
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str, specials: tuple[str, ...] = SPECIAL_TOKENS) -> CharTokenizer:
        if not text:
            raise ValueError("from_text needs a non-empty text to build the vocabulary from.")
        return cls(sorted(set(text)), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def n_chars(self) -> int:
        return len(self.chars)

    def _special(self, token: str) -> int:
        if token not in self.stoi:
            raise AttributeError(
                f"this tokenizer has no {token} token (specials: {self.specials}).")
        return self.stoi[token]

    pad_id = property(lambda self: self._special("[PAD]"))
    mask_id = property(lambda self: self._special("[MASK]"))
    cls_id = property(lambda self: self._special("[CLS]"))
    sep_id = property(lambda self: self._special("[SEP]"))

    @property
    def special_ids(self) -> list[int]:
        return [self.stoi[s] for s in self.specials]

    def is_special(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean tensor, True where ``ids`` hold a special token (ids >= n_chars)."""
        return ids >= self.n_chars

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            for pos, ch in enumerate(text):
                if ch not in self.stoi or ch in self.specials:
                    raise ValueError(
                        f"character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in the "
                        f"vocabulary of {self.n_chars} characters; build the tokenizer from a text "
                        "that contains it, or remove it from the input."
                    ) from None
            raise

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size}).")
            out.append(self.itos[i])
        return "".join(out)

    def state_dict(self) -> dict:
        return {"chars": "".join(self.chars), "specials": list(self.specials)}

    @classmethod
    def from_state_dict(cls, state: dict) -> CharTokenizer:
        return cls(list(state["chars"]), tuple(state["specials"]))


@dataclass
class Corpus:
    """A tokenized corpus split into a training part and a validation part (1-D int64 tensors)."""

    name: str
    tokenizer: CharTokenizer
    train: torch.Tensor  # (N_train,)
    val: torch.Tensor  # (N_val,)

    def subset(self, fraction: float) -> Corpus:
        """The same corpus with only the first ``fraction`` of the training tokens
        (validation unchanged)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction!r} is invalid: expected a number in (0, 1].")
        n = max(2, int(len(self.train) * fraction))
        return Corpus(f"{self.name}[:{fraction:g}]", self.tokenizer, self.train[:n], self.val)

    def __repr__(self) -> str:
        return (f"Corpus({self.name!r}, vocab_size={self.tokenizer.vocab_size}, "
                f"train={len(self.train):,} tokens, val={len(self.val):,} tokens)")


def split(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``1 - val_fraction`` for training, the rest for validation (no shuffling: the
    validation text is a contiguous stretch the model never saw, as in nanoGPT)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} is invalid: expected a number in (0, 1).")
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:]


_CORPUS_CACHE: dict[tuple[str, float], Corpus] = {}


def char_corpus(name: str = "tinyshakespeare", val_fraction: float = 0.1) -> Corpus:
    """Load, tokenize and split a corpus (memoized per process: the tensors are shared, so do
    not modify them in place)."""
    key = (name, val_fraction)
    if key not in _CORPUS_CACHE:
        _CORPUS_CACHE[key] = text_corpus(load_text(name), name, val_fraction)
    return _CORPUS_CACHE[key]


def text_corpus(text: str, name: str = "text", val_fraction: float = 0.1) -> Corpus:
    """Tokenize any text character by character and split it (first ``1 - val_fraction`` for
    training): what :func:`char_corpus` does for a named corpus, for a text of your own."""
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train, val = split(ids, val_fraction)
    return Corpus(name, tok, train, val)


class BatchSampler:
    """Random windows of ``block_size + 1`` tokens drawn on ``device``.

    The token tensor is moved to the device once; each batch is a gather there, so no per-step
    host-to-device copy happens. ``sample()`` returns ``x`` (B, T) and ``y`` (B, T) with
    ``y[:, t] = x[:, t + 1]`` in the underlying text.

    ``rows``: keep only these rows of each drawn batch. Data-parallel training gives every rank
    the same generator and ``rows=slice(r * b, (r + 1) * b)`` (b = B / world size), so the ranks
    together train on exactly the B windows one process would draw (see
    :mod:`lmlab.distributed`).
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                 rows: slice | None = None):
        if len(data) < block_size + 2:
            raise ValueError(
                f"the data has {len(data)} tokens, too few for windows of block_size={block_size} "
                "(+1 for the targets): use a smaller block_size or more data."
            )
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.block_size = block_size
        self.batch_size = batch_size
        self.generator = generator or torch.Generator(device=self.device)
        self.rows = rows if rows is not None else slice(None)
        self._offsets = torch.arange(block_size + 1, device=self.device)  # (T+1,)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.data) - self.block_size - 1
        starts = torch.randint(0, high + 1, (self.batch_size,), device=self.device,
                               generator=self.generator)[self.rows]  # (B,) or (b,)
        windows = self.data[starts[:, None] + self._offsets]  # (B, T+1)
        return windows[:, :-1], windows[:, 1:]

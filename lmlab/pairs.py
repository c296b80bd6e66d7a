"""Sentence pairs and speaker labels built from the corpus itself.

Tiny Shakespeare is a sequence of speeches separated by blank lines; each speech starts with the
speaker's name and a colon (``ROMEO:``) followed by the lines spoken. From that:

* :func:`speeches` -> (speaker, lines) records;
* :func:`line_pairs` -> consecutive lines (A, B) of one speech: coherent, in order;
* :func:`nsp_examples` -> next-sentence prediction (Devlin et al. 2019): (A, B) labelled 1, or
  (A, random line) labelled 0;
* :func:`sop_examples` -> sentence-order prediction (Lan et al. 2020): (A, B) labelled 1, or
  (B, A) labelled 0;
* :func:`encode_pairs` -> ``[CLS] A [SEP] B [SEP]`` id tensors for a pair head;
* :func:`speaker_dataset` -> the downstream probe: which of the K most frequent speakers says a
  given speech (balanced classes, so chance is exactly 1 / K).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch

from .device import generator_device


@dataclass(frozen=True)
class Speech:
    speaker: str
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def speeches(text: str) -> list[Speech]:
    """Split a play text into speeches: blocks separated by blank lines whose first line is
    ``NAME:``. Blocks without a speaker line are skipped."""
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.strip("\n").split("\n") if line.strip()]
        if len(lines) >= 2 and lines[0].endswith(":"):
            out.append(Speech(lines[0][:-1], tuple(lines[1:])))
    return out


def line_pairs(records: list[Speech]) -> list[tuple[str, str]]:
    """Every pair of consecutive lines (A, B) inside one speech, in corpus order."""
    return [(s.lines[i], s.lines[i + 1]) for s in records for i in range(len(s.lines) - 1)]


def _coin(n: int, generator: torch.Generator | None) -> list[int]:
    """n labels, exactly half of them 1 (n even), in a random order."""
    labels = torch.zeros(n, dtype=torch.long)
    labels[: n // 2] = 1
    order = torch.randperm(n, generator=generator, device=generator_device(generator))  # (n,)
    return labels[order.cpu()].tolist()


def nsp_examples(pairs: list[tuple[str, str]], generator: torch.Generator | None = None,
                 ) -> list[tuple[str, str, int]]:
    """NSP: half the pairs kept (label 1), half with B replaced by a random other line of the
    corpus (label 0). A random line usually comes from another scene or play: topic differs."""
    if len(pairs) < 2:
        raise ValueError(f"nsp_examples needs at least 2 pairs, got {len(pairs)}.")
    labels = _coin(len(pairs), generator)
    others = torch.randint(0, len(pairs), (len(pairs),), generator=generator,
                           device=generator_device(generator)).tolist()
    out = []
    for i, ((a, b), label) in enumerate(zip(pairs, labels, strict=True)):
        j = others[i]
        for _ in range(len(pairs)):  # never A itself or the true B (lines chain within a speech)
            if pairs[j][1] not in (a, b):
                break
            j = (j + 1) % len(pairs)
        else:
            raise ValueError("nsp_examples needs at least one line different from A and B.")
        out.append((a, b, 1) if label else (a, pairs[j][1], 0))
    return out


def sop_examples(pairs: list[tuple[str, str]], generator: torch.Generator | None = None, *,
                 both_orders: bool = False) -> list[tuple[str, str, int]]:
    """SOP: half the pairs in order (label 1), half swapped (label 0): same two lines, same topic.
    ``both_orders=True`` returns every pair twice, (A, B, 1) and (B, A, 0)."""
    if both_orders:
        return [ex for a, b in pairs for ex in ((a, b, 1), (b, a, 0))]
    labels = _coin(len(pairs), generator)
    return [(a, b, 1) if label else (b, a, 0) for (a, b), label in zip(pairs, labels, strict=True)]


def encode_pairs(examples: list[tuple[str, str, int]], tokenizer, t: int,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[CLS] first [SEP] second [SEP] [PAD]...`` in a window of t tokens.

    Each segment is cut to s = (t - 3) // 2 characters: the end of the first and the start of the
    second, so the junction, where order shows, is kept. Returns ids (N, t), key_padding (N, t)
    (True at real tokens) and labels (N,).
    """
    s = (t - 3) // 2
    if s < 1:
        raise ValueError(f"t={t} is too short for a pair: need t >= 5.")
    ids = torch.full((len(examples), t), tokenizer.pad_id, dtype=torch.long)  # (N, t)
    for row, (a, b, _) in enumerate(examples):
        seq = [tokenizer.cls_id, *tokenizer.encode(a[-s:]), tokenizer.sep_id,
               *tokenizer.encode(b[:s]), tokenizer.sep_id]
        ids[row, : len(seq)] = torch.tensor(seq)
    labels = torch.tensor([label for *_, label in examples], dtype=torch.long)  # (N,)
    return ids, ids != tokenizer.pad_id, labels


def words(text: str) -> set[str]:
    """Lower-cased words (letters and apostrophes) of a line, as a set."""
    return set(re.findall(r"[a-z']+", text.lower()))


def bigram_counts(text: str) -> Counter:
    """Counts of lower-cased character bigrams."""
    low = text.lower()
    return Counter(low[i : i + 2] for i in range(len(low) - 1))


def cosine(a: Counter, b: Counter) -> float:
    """sum_k a_k b_k / (||a|| ||b||), 0 for an empty count."""
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    norm = math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


ORDER_BLIND_FEATURES = ("word Jaccard", "bigram cosine", "length gap", "shorter length",
                        "longer length")


def order_blind_features(examples: list[tuple[str, str, int]]) -> torch.Tensor:
    """Topic and style cues that cannot see order, (N, 5): the Jaccard overlap of the two lines'
    word sets |W_A & W_B| / |W_A | W_B|, the cosine of their bigram counts, |len A - len B| /
    (len A + len B), and min and max length / 60. Every feature is symmetric, phi(A, B) = phi(B, A),
    so any classifier on phi scores a pair and its swap identically."""
    rows = []
    for a, b, _ in examples:
        wa, wb = words(a), words(b)
        rows.append([len(wa & wb) / max(1, len(wa | wb)),
                     cosine(bigram_counts(a), bigram_counts(b)),
                     abs(len(a) - len(b)) / max(1, len(a) + len(b)), min(len(a), len(b)) / 60,
                     max(len(a), len(b)) / 60])
    return torch.tensor(rows, dtype=torch.float32)


def top_speakers(records: list[Speech], k: int, min_chars: int = 0) -> list[str]:
    """The k speakers with the most speeches of at least ``min_chars`` characters."""
    counts = Counter(s.speaker for s in records if len(s.text) >= min_chars)
    if len(counts) < k:
        raise ValueError(f"only {len(counts)} speakers have speeches of >= {min_chars} characters; "
                         f"ask for k <= {len(counts)}.")
    return [name for name, _ in counts.most_common(k)]


@dataclass
class SpeakerData:
    """The downstream probe: ids (N, t), key_padding (N, t), labels (N,), speaker names."""

    ids: torch.Tensor
    key_padding: torch.Tensor
    labels: torch.Tensor
    names: list[str]

    def split(self, test_fraction: float, generator: torch.Generator | None = None):
        """(train, test) with a seeded random split, stratified so each keeps balanced classes."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction!r} is invalid: expected (0, 1).")
        train_idx, test_idx = [], []
        for c in range(len(self.names)):
            idx = (self.labels == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=generator,
                                     device=generator_device(generator)).cpu()]
            n_test = max(1, round(len(idx) * test_fraction))
            test_idx.append(idx[:n_test])
            train_idx.append(idx[n_test:])
        pick = lambda i: SpeakerData(self.ids[i], self.key_padding[i], self.labels[i], self.names)  # noqa: E731
        return pick(torch.cat(train_idx)), pick(torch.cat(test_idx))


def speaker_dataset(text: str, tokenizer, *, k: int = 4, t: int = 64, per_speaker: int = 100,
                    min_chars: int = 32, generator: torch.Generator | None = None) -> SpeakerData:
    """Which of the k most frequent speakers says this speech? The first t characters of each
    speech (padded with [PAD]); ``per_speaker`` speeches per speaker (fewer if the rarest of the k
    has fewer), drawn at random, so the classes are balanced and chance is 1 / k."""
    records = [s for s in speeches(text) if len(s.text) >= min_chars]
    names = top_speakers(records, k, min_chars)
    by_name = {n: [s for s in records if s.speaker == n] for n in names}
    n = min(per_speaker, *(len(v) for v in by_name.values()))
    ids = torch.full((n * k, t), tokenizer.pad_id, dtype=torch.long)  # (N, t)
    labels = torch.empty(n * k, dtype=torch.long)  # (N,)
    row = 0
    for label, name in enumerate(names):
        chosen = torch.randperm(len(by_name[name]), generator=generator,
                                device=generator_device(generator))[:n].tolist()
        for i in chosen:
            enc = tokenizer.encode(by_name[name][i].text[:t])
            ids[row, : len(enc)] = torch.tensor(enc)
            labels[row] = label
            row += 1
    return SpeakerData(ids, ids != tokenizer.pad_id, labels, names)

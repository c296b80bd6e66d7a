"""Sentence pairs and speaker labels built from the corpus itself.

Tiny Shakespeare is a sequence of speeches separated by blank lines; each speech starts with the
speaker's name and a colon (``ROMEO:``) followed by the lines spoken. From that:

* :func:`speeches` -> (speaker, lines) records;
* :func:`line_pairs` -> consecutive lines (A, B) of one speech: coherent, in order;
* :func:`nsp_examples` -> next-sentence prediction (Devlin et al. 2019): (A, B) labelled 1, or
  (A, random line) labelled 0;
* :func:`sop_examples` -> sentence-order prediction (Lan et al. 2020): (A, B) labelled 1, or
  (B, A) labelled 0;
* :func:`encode_pairs` -> ``[CLS] A [SEP] B [SEP]`` id tensors for a pair head (the layout of
  :func:`pair_layout`);
* :func:`line_pair_bank` -> the same pairs read straight from a token-id tensor, so that the
  ``mlm_nsp`` / ``mlm_sop`` objectives train on whole lines (the junction is a line break, never
  a cut through a word) and draw a batch of NSP or SOP pairs in one gather;
* :func:`speaker_dataset` -> a downstream probe: which of the K most frequent speakers says a
  given speech (balanced classes, so chance is exactly 1 / K);
* :func:`speaker_lines` -> the same question for single lines, each tagged with its stretch of
  speeches so that a split keeps a speaker's lines from one stretch on one side;
* :func:`hidden_char_windows` -> the probe chapter 2 compares objectives on: windows of text with
  one character hidden behind [MASK], labelled with that character.
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


def pair_layout(first: torch.Tensor, second: torch.Tensor, tokenizer, t: int) -> torch.Tensor:
    """``[CLS] first [SEP] second [SEP] [PAD]...`` for segments of s tokens each, (N, t).

    ``first`` (N, s) holds the *end* of a line, left-padded with [PAD]; ``second`` (N, s) the
    *start* of a line, right-padded. The junction (where order shows) always sits at position
    s + 1; [PAD] inside a slot is masked out by the key padding like any other. Needs t >= 2s + 3.
    """
    n, s = first.shape
    if second.shape != first.shape or t < 2 * s + 3:
        raise ValueError(f"pair_layout needs two (N, s) segments and t >= 2s + 3; got "
                         f"{tuple(first.shape)}, {tuple(second.shape)}, t={t}.")

    def col(token_id):
        return torch.full((n, 1), token_id, dtype=first.dtype, device=first.device)

    pad = torch.full((n, t - 2 * s - 3), tokenizer.pad_id, dtype=first.dtype, device=first.device)
    return torch.cat([col(tokenizer.cls_id), first, col(tokenizer.sep_id), second,
                      col(tokenizer.sep_id), pad], dim=1)  # (N, t)


def segment_length(t: int) -> int:
    """s = (t - 3) // 2: the characters kept of each line in a window of t tokens."""
    s = (t - 3) // 2
    if s < 1:
        raise ValueError(f"t={t} is too short for a pair: need t >= 5.")
    return s


def encode_pairs(examples: list[tuple[str, str, int]], tokenizer, t: int,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, second, label) examples -> the :func:`pair_layout` of a window of t tokens.

    Each line is cut to s = (t - 3) // 2 characters: the end of the first and the start of the
    second, so the junction is kept. Returns ids (N, t), key_padding (N, t) (True at real tokens)
    and labels (N,).
    """
    s = segment_length(t)
    first = torch.full((len(examples), s), tokenizer.pad_id, dtype=torch.long)  # (N, s)
    second = torch.full((len(examples), s), tokenizer.pad_id, dtype=torch.long)  # (N, s)
    for row, (a, b, _) in enumerate(examples):
        tail, head = tokenizer.encode(a[-s:]), tokenizer.encode(b[:s])
        if tail:
            first[row, s - len(tail):] = torch.tensor(tail)
        if head:
            second[row, : len(head)] = torch.tensor(head)
    ids = pair_layout(first, second, tokenizer, t)  # (N, t)
    labels = torch.tensor([label for *_, label in examples], dtype=torch.long)  # (N,)
    return ids, ids != tokenizer.pad_id, labels


PAIR_TASKS = ("nsp", "sop")


@dataclass
class LinePairBank:
    """Lines of a token-id text and the pairs of consecutive lines of one speech.

    heads (L, s): the first s ids of each line, right-padded with [PAD]; tails (L, s): its last s
    ids, left-padded; text_lines (M,): the lines that are neither blank nor a speaker's name,
    ascending; pair_first (P,): the text lines i whose line i + 1 is a text line too (one speech).
    """

    heads: torch.Tensor
    tails: torch.Tensor
    text_lines: torch.Tensor
    pair_first: torch.Tensor

    def sample(self, n: int, task: str, tokenizer, t: int, generator: torch.Generator | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs for ``task``, as :func:`pair_layout` ids (n, t) and labels (n,), 1 = in order.

        Each draw picks a pair (A, B) of consecutive lines uniformly and a label from a fair coin.
        Label 1: (end of A, start of B). Label 0: for ``sop`` the same two lines swapped, (end of
        B, start of A); for ``nsp`` (end of A, start of a random text line R, R not A or B).
        Both classes put a line end before the middle [SEP] and a line start after it.
        """
        if task not in PAIR_TASKS:
            raise ValueError(f"task={task!r} is invalid: expected one of {PAIR_TASKS}.")
        device = self.heads.device
        pick = torch.randint(0, len(self.pair_first), (n,), generator=generator, device=device)
        labels = (torch.rand(n, generator=generator, device=device) < 0.5).long()  # (n,)
        keep = labels.bool()[:, None]  # (n, 1)
        a = self.pair_first[pick]  # (n,) line index of A; B is a + 1
        b = a + 1
        if task == "sop":
            first = torch.where(keep, self.tails[a], self.tails[b])  # (n, s)
            second = torch.where(keep, self.heads[b], self.heads[a])
        else:
            m = len(self.text_lines)
            j = torch.randint(0, m, (n,), generator=generator, device=device)  # (n,)
            r = self.text_lines[j]
            clash = (r == a) | (r == b)  # then two text lines further on: never A or B
            r = torch.where(clash, self.text_lines[(j + 2) % m], r)
            first = self.tails[a]
            second = torch.where(keep, self.heads[b], self.heads[r])
        return pair_layout(first, second, tokenizer, t), labels


def line_pair_bank(ids: torch.Tensor, tokenizer, s: int) -> LinePairBank:
    """The lines of a 1-D token-id text ``ids`` (N,) as a :class:`LinePairBank` with segments of s.

    A line is the text between two newlines. Blank lines separate speeches and a line ending in
    ``:`` names the speaker, so a pair (i, i + 1) is kept only when neither line is blank or a
    speaker line: two consecutive lines of one speech, as :func:`line_pairs` gives from the text.
    """
    if ids.dim() != 1:
        raise ValueError(f"line_pair_bank takes a 1-D id tensor, got shape {tuple(ids.shape)}.")
    if "\n" not in tokenizer.stoi:
        raise ValueError("line_pair_bank splits a text into lines, but this tokenizer has no "
                         "newline character: build it from a text with line breaks.")
    newline, colon = tokenizer.stoi["\n"], tokenizer.stoi.get(":", -1)  # -1: no speaker lines
    breaks = (ids == newline).nonzero().flatten()  # (K,) positions of the newlines
    starts, ends = breaks[:-1] + 1, breaks[1:]  # (L,) each line is ids[start:end]
    length = ends - starts  # (L,)
    text_line = (length > 0) & (ids[(ends - 1).clamp_min(0)] != colon)  # (L,)
    pair_first = (text_line[:-1] & text_line[1:]).nonzero().flatten()  # (P,)
    if len(pair_first) < 1 or int(text_line.sum()) < 3:
        raise ValueError("the text has no two consecutive lines of one speech to pair; give "
                         "line_pair_bank a longer text with line breaks.")
    offsets = torch.arange(s, device=ids.device)  # (s,)
    head_idx = starts[:, None] + offsets  # (L, s)
    tail_idx = ends[:, None] - s + offsets  # (L, s)
    pad = torch.full_like(head_idx, tokenizer.pad_id)
    heads = torch.where(offsets < length[:, None], ids[head_idx.clamp(max=len(ids) - 1)], pad)
    tails = torch.where(tail_idx >= starts[:, None], ids[tail_idx.clamp_min(0)], pad)
    return LinePairBank(heads, tails, text_line.nonzero().flatten(), pair_first)


def junction_bigram_accuracy(train_ids: torch.Tensor, train_labels: torch.Tensor,
                             test_ids: torch.Tensor, test_labels: torch.Tensor, s: int) -> float:
    """Test accuracy of the simplest order cue: the two characters around the middle [SEP].

    Ids (N, t) in the :func:`pair_layout` of segments of s (the junction is ids[:, s] and
    ids[:, s + 2]). Each training junction bigram votes for its labels; a test pair gets the
    majority label of its bigram (label 1 for a bigram never seen, or a tie). A pair task whose
    junction is a cut through a word is largely solved by this; one whose segments are whole lines
    leaves it only what line ends and line starts say (punctuation, capitals).
    """
    big = int(max(train_ids.max(), test_ids.max())) + 1  # ids lie in [0, big)
    train_codes = train_ids[:, s].long() * big + train_ids[:, s + 2].long()  # (N,) one per bigram
    test_codes = test_ids[:, s].long() * big + test_ids[:, s + 2].long()  # (M,)
    votes = torch.zeros(big * big, 2)  # (bigram, label) counts
    votes.index_put_((train_codes, train_labels.long()), torch.ones(len(train_codes)),
                     accumulate=True)
    predicted = (votes[test_codes, 0] <= votes[test_codes, 1]).long()  # (M,) ties -> 1
    return float((predicted == test_labels).float().mean())


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
    """The downstream probe: ids (N, t), key_padding (N, t), labels (N,), speaker names, and
    optionally groups (N,): the stretch of text each row comes from (rows of one group share its
    topic and names, so a split must keep a class's rows of one group together)."""

    ids: torch.Tensor
    key_padding: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    groups: torch.Tensor | None = None

    def split_indices(self, test_fraction: float, generator: torch.Generator | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(train rows, test rows) of a seeded random split, stratified so each keeps balanced
        classes: n_test = round(n_c * test_fraction) rows of each class c go to the test set (at
        least 1, and at least 1 row left to train on).

        With ``groups``, each class's rows are drawn group by group, in a random order, until the
        class has n_test test rows; the surplus rows of the last group drawn go to neither side, so
        no class has rows of one group on both sides and the test classes stay exactly balanced. (A
        group may hold rows of several classes, e.g. a stretch of text with several speakers: each
        class's rows from it go to one side.)"""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction!r} is invalid: expected (0, 1).")
        train_idx, test_idx = [], []
        for c in range(len(self.names)):
            idx = (self.labels == c).nonzero().flatten()
            if len(idx) < 2:
                raise ValueError(f"class {self.names[c]!r} has {len(idx)} row(s): a split needs "
                                 "at least 2 of each class.")
            n_test = min(len(idx) - 1, max(1, round(len(idx) * test_fraction)))  # >= 1 each side
            if self.groups is None:
                idx = idx[torch.randperm(len(idx), generator=generator,
                                         device=generator_device(generator)).cpu()]
                test_idx.append(idx[:n_test])
                train_idx.append(idx[n_test:])
                continue
            names = self.groups[idx].unique()  # sorted, so the draw depends only on the generator
            order = names[torch.randperm(len(names), generator=generator,
                                         device=generator_device(generator)).cpu()]
            rows = torch.cat([idx[self.groups[idx] == g] for g in order.tolist()])
            cut = int((self.groups[rows] == self.groups[rows[n_test - 1]]).nonzero().max()) + 1
            if cut == len(rows):
                raise ValueError(
                    f"class {self.names[c]!r}: its {len(idx)} rows lie in {len(names)} group(s), "
                    f"and the groups that hold its {n_test} test rows leave none to train on; use "
                    "smaller groups or a smaller test_fraction.")
            test_idx.append(rows[:n_test])  # the groups before the cut, the last one in part
            train_idx.append(rows[cut:])  # whole groups only
        return torch.cat(train_idx), torch.cat(test_idx)

    def split(self, test_fraction: float, generator: torch.Generator | None = None):
        """(train, test) SpeakerData of :meth:`split_indices`."""
        train_idx, test_idx = self.split_indices(test_fraction, generator)
        return self.rows(train_idx), self.rows(test_idx)

    def rows(self, index: torch.Tensor) -> SpeakerData:
        """The rows ``index`` (a 1-D tensor of row numbers), groups included."""
        groups = None if self.groups is None else self.groups[index]
        return SpeakerData(self.ids[index], self.key_padding[index], self.labels[index],
                           self.names, groups)


def _balanced_rows(items: dict[str, list[tuple[int, str]]], per_speaker: int, tokenizer, t: int,
                   generator: torch.Generator | None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (N, t), labels (N,), groups (N,) of ``per_speaker`` items of each speaker (fewer if the
    rarest has fewer), drawn at random and kept in text order; ``items`` maps each speaker, in
    label order, to its (group, text) items; a row is the text's first t characters, padded with
    [PAD]."""
    n = min(per_speaker, *(len(v) for v in items.values()))
    ids = torch.full((n * len(items), t), tokenizer.pad_id, dtype=torch.long)  # (N, t)
    labels = torch.empty(n * len(items), dtype=torch.long)  # (N,)
    groups = torch.empty(n * len(items), dtype=torch.long)  # (N,)
    row = 0
    for label, pool in enumerate(items.values()):
        chosen = torch.randperm(len(pool), generator=generator,
                                device=generator_device(generator))[:n].sort().values.tolist()
        for i in chosen:
            group, text = pool[i]
            enc = tokenizer.encode(text[:t])
            ids[row, : len(enc)] = torch.tensor(enc)
            labels[row], groups[row] = label, group
            row += 1
    return ids, labels, groups


def speaker_dataset(text: str, tokenizer, *, k: int = 4, t: int = 64, per_speaker: int = 100,
                    min_chars: int = 32, generator: torch.Generator | None = None) -> SpeakerData:
    """Which of the k most frequent speakers says this speech? The first t characters of each
    speech (padded with [PAD]); ``per_speaker`` speeches per speaker (fewer if the rarest of the k
    has fewer), drawn at random, so the classes are balanced and chance is 1 / k."""
    records = [s for s in speeches(text) if len(s.text) >= min_chars]
    names = top_speakers(records, k, min_chars)
    items = {n: [(i, s.text) for i, s in enumerate(records) if s.speaker == n] for n in names}
    ids, labels, _ = _balanced_rows(items, per_speaker, tokenizer, t, generator)
    return SpeakerData(ids, ids != tokenizer.pad_id, labels, names)


def speaker_lines(text: str, tokenizer, *, k: int = 4, t: int = 48, per_speaker: int = 200,
                  min_chars: int = 20, max_per_speech: int = 8, speeches_per_group: int = 1,
                  generator: torch.Generator | None = None) -> SpeakerData:
    """Which of the k speakers with the most lines says this line? One row per line of verse of
    at least ``min_chars`` characters (its first t characters, padded with [PAD]), at most
    ``max_per_speech`` from one speech (its first ones), so that no long speech dominates a class;
    ``per_speaker`` lines per speaker (fewer if the rarest of the k has fewer), drawn at random,
    so the classes are balanced and chance is 1 / k.

    ``groups`` numbers each row's stretch of text: speeches 0 .. g-1 of the text are group 0,
    g .. 2g-1 group 1, and so on (g = ``speeches_per_group``; 1: each speech alone), so that
    :meth:`SpeakerData.split` keeps a speaker's lines from one stretch on one side. Lines of one
    speech, or of one scene, share a topic and the names spoken to; a stretch of about a scene's
    speeches keeps those on one side.

    Build it from text the model under test never trained on (a pretrained model has read every
    line of its training text under its speaker's name)."""
    if max_per_speech < 1 or speeches_per_group < 1:
        raise ValueError(f"max_per_speech={max_per_speech!r} and speeches_per_group="
                         f"{speeches_per_group!r}: both must be >= 1.")
    records = [(i // speeches_per_group, s.speaker, line) for i, s in enumerate(speeches(text))
               for line in [x for x in s.lines if len(x.strip()) >= min_chars][:max_per_speech]]
    counts = Counter(speaker for _, speaker, _ in records)
    if len(counts) < k:
        raise ValueError(f"only {len(counts)} speakers have lines of >= {min_chars} characters; "
                         f"ask for k <= {len(counts)}.")
    names = [name for name, _ in counts.most_common(k)]
    items = {n: [(group, line) for group, speaker, line in records if speaker == n] for n in names}
    ids, labels, groups = _balanced_rows(items, per_speaker, tokenizer, t, generator)
    return SpeakerData(ids, ids != tokenizer.pad_id, labels, names, groups)


def hidden_char_windows(ids: torch.Tensor, tokenizer, n: int, t: int, position: int,
                        generator: torch.Generator | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """n windows of t tokens drawn uniformly from the 1-D id text ``ids`` (N,), each with the
    token at ``position`` replaced by [MASK]: inputs (n, t) and labels (n,), the hidden tokens.

    A probe that reads a frozen model's hidden state next to the gap and names the hidden
    character measures how much of the text's structure pretraining made linearly readable;
    with the gap inside the window, a bidirectional model can use the context on both sides.
    """
    if ids.dim() != 1:
        raise ValueError("hidden_char_windows takes a 1-D id tensor, got shape "
                         f"{tuple(ids.shape)}.")
    if not 0 <= position < t:
        raise ValueError(f"position={position} is invalid: expected 0 <= position < t={t}.")
    if len(ids) < t or n < 1:
        raise ValueError(f"need n >= 1 windows of t={t} from a text of at least t tokens; got "
                         f"n={n} and a text of {len(ids)}.")
    starts = torch.randint(0, len(ids) - t + 1, (n,), generator=generator,
                           device=generator_device(generator)).to(ids.device)  # (n,)
    windows = ids[starts[:, None] + torch.arange(t, device=ids.device)]  # (n, t)
    labels = windows[:, position].clone()  # (n,)
    windows[:, position] = tokenizer.mask_id
    return windows, labels

"""Sentence pairs, order-blind features and the speaker dataset built from the corpus."""

import pytest
import torch

from lmlab.data import CharTokenizer
from lmlab.pairs import (
    encode_pairs,
    line_pairs,
    nsp_examples,
    order_blind_features,
    sop_examples,
    speaker_dataset,
    speeches,
)

PLAY = ("ROMEO:\nBut soft, what light\nthrough yonder window breaks?\n\n"
        "JULIET:\nAy me!\n\n\nROMEO:\nShe speaks.\nO, speak again,\nbright angel!\n\n"
        "no speaker line here\n\nJULIET:\nO Romeo, Romeo!\nwherefore art thou Romeo?\n")
TOK = CharTokenizer.from_text(PLAY + "abcdefghijklmnopqrstuvwxyz")


def test_speeches_and_line_pairs():
    records = speeches(PLAY)
    assert [s.speaker for s in records] == ["ROMEO", "JULIET", "ROMEO", "JULIET"]  # no speaker: out
    assert records[1].lines == ("Ay me!",)
    assert line_pairs(records) == [("But soft, what light", "through yonder window breaks?"),
                                   ("She speaks.", "O, speak again,"),
                                   ("O, speak again,", "bright angel!"),
                                   ("O Romeo, Romeo!", "wherefore art thou Romeo?")]


def test_nsp_and_sop_examples_are_balanced_and_correct():
    pairs = [(f"a{i}", f"b{i}") for i in range(100)]
    g = torch.Generator().manual_seed(0)
    nsp = nsp_examples(pairs, g)
    sop = sop_examples(pairs, g)
    assert sum(label for *_, label in nsp) == 50 and sum(label for *_, label in sop) == 50
    for (a, b), (x, y, label) in zip(pairs, nsp, strict=True):
        assert x == a and (y == b) == bool(label) and y.startswith("b")
    chained = [("l1", "l2"), ("l2", "l3"), ("l3", "l4")]  # consecutive lines of one speech
    for a, b, label in nsp_examples(chained * 4, g):
        assert label == 1 or b not in (a, {"l1": "l2", "l2": "l3", "l3": "l4"}[a])
    for (a, b), (x, y, label) in zip(pairs, sop, strict=True):
        assert (x, y) == ((a, b) if label else (b, a))
    both = sop_examples(pairs, both_orders=True)
    assert both[:2] == [("a0", "b0", 1), ("b0", "a0", 0)] and len(both) == 200


def test_encode_pairs_layout():
    ids, key_padding, labels = encode_pairs([("abcdefgh", "xyz", 1)], TOK, 11)  # s = 4
    expected = [TOK.cls_id, *TOK.encode("efgh"), TOK.sep_id, *TOK.encode("xyz"), TOK.sep_id,
                TOK.pad_id]
    assert ids[0].tolist() == expected and labels.tolist() == [1]
    assert key_padding[0].tolist() == [True] * 10 + [False]


def test_order_blind_features_are_symmetric_and_hand_checked():
    phi = order_blind_features([("the cat", "the dog", 1), ("the dog", "the cat", 0)])
    assert torch.equal(phi[0], phi[1])
    assert phi[0, 0].item() == pytest.approx(1 / 3)  # {the} / {the, cat, dog}
    assert phi[0, 2].item() == 0.0 and phi[0, 3].item() == pytest.approx(7 / 60)


def test_speaker_dataset_is_balanced():
    data = speaker_dataset(PLAY, TOK, k=2, t=16, per_speaker=5, min_chars=5,
                           generator=torch.Generator().manual_seed(0))
    assert data.names == ["ROMEO", "JULIET"]
    assert data.labels.tolist() == [0, 0, 1, 1]  # two speeches each
    assert data.ids.shape == (4, 16) and data.key_padding.sum() == 16 + 6 + 16 + 16
    with pytest.raises(ValueError, match="speakers"):
        speaker_dataset(PLAY, TOK, k=5, min_chars=5)


def test_split_is_stratified():
    ids = torch.zeros(40, 4, dtype=torch.long)
    from lmlab.pairs import SpeakerData

    data = SpeakerData(ids, ids == 0, torch.arange(40) % 4, ["a", "b", "c", "d"])
    train, test = data.split(0.25, torch.Generator().manual_seed(0))
    assert torch.bincount(test.labels).tolist() == [2, 2, 2, 2]  # round(10 * 0.25) = 2 (even)
    assert torch.bincount(train.labels).tolist() == [8, 8, 8, 8]

"""Sentence pairs, order-blind features and the speaker dataset built from the corpus."""

import pytest
import torch

from lmlab.data import CharTokenizer
from lmlab.pairs import (
    SpeakerData,
    encode_pairs,
    hidden_char_windows,
    line_pair_bank,
    line_pairs,
    nsp_examples,
    order_blind_features,
    sop_examples,
    speaker_dataset,
    speaker_lines,
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
    ids, key_padding, labels = encode_pairs([("abcdefgh", "xyz", 1), ("ab", "wxyzw", 0)], TOK,
                                            12)  # s = 4
    p, c, e = TOK.pad_id, TOK.cls_id, TOK.sep_id
    assert ids[0].tolist() == [c, *TOK.encode("efgh"), e, *TOK.encode("xyz"), p, e, p]
    assert ids[1].tolist() == [c, p, p, *TOK.encode("ab"), e, *TOK.encode("wxyz"), e, p]
    assert labels.tolist() == [1, 0] and torch.equal(key_padding, ids != p)


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_line_pair_bank_draws_whole_lines_of_one_speech(task):
    ids = torch.tensor(TOK.encode(PLAY))
    bank = line_pair_bank(ids, TOK, 4)
    pairs = line_pairs(speeches(PLAY))
    text = {line for pair in pairs for line in pair} | {"Ay me!", "no speaker line here"}
    assert [TOK.decode(bank.heads[i][bank.heads[i] != TOK.pad_id]) for i in bank.text_lines] == [
        line[:4] for line in sorted(text, key=PLAY.index)]
    consecutive = {(a[-4:], b[:4]) for a, b in pairs}
    tails = {a[-4:] for a, _ in pairs}
    out, labels = bank.sample(400, task, TOK, 11, torch.Generator().manual_seed(0))
    assert out.shape == (400, 11) and 150 < int(labels.sum()) < 250  # a fair coin: 200 +- 5 sd
    decode = lambda row: TOK.decode(row[row != TOK.pad_id])  # noqa: E731
    for row, label in zip(out, labels.tolist(), strict=True):
        assert row[0] == TOK.cls_id and row[5] == TOK.sep_id and row[10] == TOK.sep_id
        first, second = decode(row[1:5]), decode(row[6:10])
        if label:
            assert (first, second) in consecutive
        elif task == "sop":  # the same two lines, swapped
            assert (second, first) in {(a[:4], b[-4:]) for a, b in pairs}
        else:  # A's end, then the start of another text line that is not A's successor
            assert first in tails and (first, second) not in consecutive
            assert second in {line[:4] for line in text}


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
    data = SpeakerData(ids, ids == 0, torch.arange(40) % 4, ["a", "b", "c", "d"])
    train, test = data.split(0.25, torch.Generator().manual_seed(0))
    assert torch.bincount(test.labels).tolist() == [2, 2, 2, 2]  # round(10 * 0.25) = 2 (even)
    assert torch.bincount(train.labels).tolist() == [8, 8, 8, 8]


def test_speaker_lines_are_lines_of_their_speeches():
    data = speaker_lines(PLAY, TOK, k=2, t=16, per_speaker=3, min_chars=10,
                         generator=torch.Generator().manual_seed(0))
    # lines of >= 10 characters: ROMEO 5 (two speeches), JULIET 2 (one speech): 2 each, balanced
    assert data.names == ["ROMEO", "JULIET"] and data.labels.tolist() == [0, 0, 1, 1]
    text = {r: TOK.decode(data.ids[r][data.key_padding[r]].tolist()) for r in range(4)}
    romeo = {"But soft, what l", "through yonder w", "She speaks.", "O, speak again,",
             "bright angel!"}
    assert {text[0], text[1]} <= romeo  # first 16 characters of a line, from the right speaker
    assert {text[2], text[3]} == {"O Romeo, Romeo!", "wherefore art th"}
    assert data.groups[2] == data.groups[3] == 3  # JULIET's second speech is the text's fourth
    assert set(data.groups[:2].tolist()) <= {0, 2}
    with pytest.raises(ValueError, match="speakers"):
        speaker_lines(PLAY, TOK, k=3, min_chars=10)
    capped = speaker_lines(PLAY, TOK, k=1, t=16, per_speaker=9, min_chars=10, max_per_speech=1)
    assert capped.groups.tolist() == [0, 2]  # one line from each of ROMEO's two speeches
    with pytest.raises(ValueError, match="max_per_speech"):
        speaker_lines(PLAY, TOK, max_per_speech=0)
    stretches = speaker_lines(PLAY, TOK, k=2, t=16, per_speaker=2, min_chars=10,
                              speeches_per_group=2, generator=torch.Generator().manual_seed(0))
    # speeches 0, 1 -> stretch 0; speeches 2, 3 -> stretch 1: JULIET's lines are speech 3's
    assert stretches.groups[2:].tolist() == [1, 1]
    assert set(stretches.groups[:2].tolist()) <= {0, 1}


def test_grouped_split_keeps_each_group_on_one_side_and_balances_the_test_classes():
    # 2 classes x 30 rows; class c's rows come in groups of sizes 1..7, the same group numbers in
    # both classes (a stretch of text holds lines of several speakers)
    sizes = [1, 2, 3, 4, 5, 6, 7, 2]  # 30 rows
    groups = torch.tensor([g for c in range(2) for g, n in enumerate(sizes) for _ in range(n)])
    labels = torch.tensor([c for c in range(2) for n in sizes for _ in range(n)])
    ids = torch.zeros(60, 4, dtype=torch.long)
    data = SpeakerData(ids, ids == 0, labels, ["a", "b"], groups)
    for seed in range(20):
        train, test = data.split(0.25, torch.Generator().manual_seed(seed))
        assert torch.bincount(test.labels).tolist() == [8, 8]  # round(30 * 0.25) each
        sides = [set(zip(d.labels.tolist(), d.groups.tolist(), strict=True)) for d in (train, test)]
        assert not sides[0] & sides[1]  # no class's group on both sides
        # per class only the last group drawn into the test set loses rows: fewer than its 7
        assert all(30 - 7 < (train.labels == c).sum() + 8 <= 30 for c in range(2))
    # one group larger than the test set (10 rows, 4 test rows per class), with enough other
    # groups that some whole group is always left to train on: never split across the sides
    big = SpeakerData(torch.zeros(32, 4, dtype=torch.long), torch.ones(32, 4, dtype=torch.bool),
                      torch.tensor([0] * 16 + [1] * 16), ["a", "b"],
                      torch.tensor([0] * 10 + [1, 2, 3, 4, 5, 6]
                                   + [7] * 10 + [8, 9, 10, 11, 12, 13]))
    for seed in range(20):
        train, test = big.split(0.25, torch.Generator().manual_seed(seed))
        assert torch.bincount(test.labels).tolist() == [4, 4]
        assert not set(train.groups.tolist()) & set(test.groups.tolist())
    # every class keeps a training row: ungrouped, round(2 * 0.75) = 2 test rows would leave none
    two = SpeakerData(torch.zeros(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.bool),
                      torch.tensor([0, 0, 1, 1]), ["a", "b"])
    train, test = two.split(0.75, torch.Generator().manual_seed(0))
    assert torch.bincount(train.labels).tolist() == [1, 1] == torch.bincount(test.labels).tolist()
    one_group = SpeakerData(two.ids, two.key_padding, two.labels, two.names,
                            torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="'a'.*none to train on"):
        one_group.split(0.25, torch.Generator().manual_seed(0))  # a: one group, all of it test
    with pytest.raises(ValueError, match="at least 2"):
        SpeakerData(torch.zeros(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.bool),
                    torch.tensor([0, 0, 1]), ["a", "b"]).split(0.5)


def test_junction_bigram_accuracy_hand_computed():
    from lmlab.pairs import junction_bigram_accuracy

    def pair(a, b):  # s = 1: [CLS] a [SEP] b [SEP]
        return [TOK.cls_id, TOK.stoi[a], TOK.sep_id, TOK.stoi[b], TOK.sep_id]

    train = torch.tensor([pair("a", "b"), pair("a", "b"), pair("a", "b"), pair("b", "a")])
    train_labels = torch.tensor([1, 1, 0, 0])  # "ab": 2 votes for 1, 1 for 0; "ba": 0
    test = torch.tensor([pair("a", "b"), pair("b", "a"), pair("b", "b"), pair("a", "b")])
    test_labels = torch.tensor([1, 0, 0, 0])  # right, right, unseen -> 1: wrong, wrong
    assert junction_bigram_accuracy(train, train_labels, test, test_labels, 1) == 0.5


def test_hidden_char_windows_hide_one_character_of_real_text():
    text = torch.tensor(TOK.encode(PLAY))  # (N,)
    g = torch.Generator().manual_seed(0)
    inputs, labels = hidden_char_windows(text, TOK, 50, 12, 5, g)
    assert inputs.shape == (50, 12) and labels.shape == (50,)
    assert (inputs[:, 5] == TOK.mask_id).all() and not TOK.is_special(labels).any()
    plain = TOK.decode(text)
    for row, label in zip(inputs, labels, strict=True):
        window = TOK.decode(torch.cat([row[:5], label[None], row[6:]]))
        assert window in plain  # the window is a piece of the text, its gap filled back
        assert (row[torch.arange(12) != 5] != TOK.mask_id).all()  # one gap only
    for bad in ({"position": 12}, {"position": -1}, {"n": 0}):
        kwargs = {"n": 4, "t": 12, "position": 5} | bad
        with pytest.raises(ValueError):
            hidden_char_windows(text, TOK, generator=g, **kwargs)

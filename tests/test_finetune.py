"""Fine-tuning: layer groups, freezing, gradual unfreezing, discriminative lrs, the speaker task,
adapting a causal LM by each method, the cache and confidence intervals."""

from __future__ import annotations

import pytest
import torch

from lmlab import finetune as FT
from lmlab.config import ModelConfig
from lmlab.data import CharTokenizer, Corpus
from lmlab.heads import fine_tune
from lmlab.model import Transformer
from lmlab.prompts import IGNORE, hard_prompt_vectors, init_ids_for

CONFIG = ModelConfig(vocab_size=17, block_size=16, n_layer=3, n_head=2, d_model=16)


def body(seed=0):
    torch.manual_seed(seed)
    return Transformer(CONFIG).eval()


def labelled(n=24, t=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CONFIG.vocab_size, (n, t), generator=g)
    return ids, torch.ones(n, t, dtype=torch.bool), torch.randint(0, 3, (n,), generator=g)


def test_layer_groups_cover_every_parameter_once_bottom_to_top():
    m = body()
    head = torch.nn.Linear(16, 3)
    groups = FT.layer_groups(m, head)
    assert len(groups) == 1 + CONFIG.n_layer + 1
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat))
    assert set(flat) == {id(p) for p in [*m.parameters(), *head.parameters()]}
    assert any(p is m.tok_emb.weight for p in groups[0])
    assert any(p is head.weight for p in groups[-1])
    assert all(any(p is q for q in groups[1 + i]) for i, b in enumerate(m.blocks)
               for p in b.parameters())


def test_discriminative_lrs_and_unfreezing_schedule_by_hand():
    assert FT.discriminative_lrs(3, 1.0, 2.0) == [0.25, 0.5, 1.0]  # lr / 2^2, lr / 2, lr
    assert FT.discriminative_lrs(2, 3e-3, 1.0) == [3e-3, 3e-3]
    assert FT.unfreeze_steps(4, 100) == [75, 50, 25, 0]  # the top group first


def test_defaults_are_exactly_heads_fine_tune():
    ids, kp, y = labelled()
    a = FT.fine_tune_classifier(body(), ids, kp, y, 3, steps=5, batch_size=4, seed=3)
    b = fine_tune(body(), ids, kp, y, 3, steps=5, batch_size=4, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_frozen_parameters_do_not_move_and_the_others_do():
    ids, kp, y = labelled()
    base = body()
    m = FT.fine_tune_classifier(base, ids, kp, y, 3, steps=3, batch_size=4, freeze_below=2)
    groups_after = FT.layer_groups(m.body)
    groups_before = FT.layer_groups(base)
    for g in range(3):  # embeddings, blocks 0 and 1
        assert all(torch.equal(p, q) for p, q in zip(groups_after[g], groups_before[g],
                                                     strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(groups_after[3], groups_before[3],
                                                     strict=True))
    with pytest.raises(ValueError, match="freeze_below=4"):
        FT.fine_tune_classifier(base, ids, kp, y, 3, steps=1, freeze_below=4)


def test_gradual_unfreezing_holds_the_lower_groups_back():
    ids, kp, y = labelled()
    base = body()
    run = lambda steps, gradual: FT.fine_tune_classifier(  # noqa: E731
        base, ids, kp, y, 3, steps=steps, batch_size=4, gradual=gradual)
    # one step: every group starts at step 0 (unfreeze_steps(5, 1) == [0] * 5): the plain run
    assert FT.unfreeze_steps(5, 1) == [0] * 5
    assert all(torch.equal(p, q) for p, q in zip(run(1, True).parameters(),
                                                 run(1, False).parameters(), strict=True))
    # five steps: group g joins at step 4 - g, so the embeddings train once, block 0 twice ...
    gradual, plain = run(5, True), run(5, False)
    assert not torch.equal(gradual.body.tok_emb.weight, base.tok_emb.weight)
    assert not torch.equal(gradual.body.tok_emb.weight, plain.body.tok_emb.weight)
    # ... and the step the embeddings took is their first AdamW step: lr-sized, sign of the grad
    # (|update| <= lr = 1e-3 per element, plus the decay lr * wd * |w|)
    bound = 1e-3 * (1 + 0.01 * base.tok_emb.weight.abs()) + 1e-7
    assert ((gradual.body.tok_emb.weight - base.tok_emb.weight).abs() <= bound).all()
    assert ((plain.body.tok_emb.weight - base.tok_emb.weight).abs() > bound).any()


def test_line_pieces_start_at_lines_and_respect_the_length():
    text = "abc def\nghi\njklmnopqrstu\nv"
    assert FT.line_pieces(text, 12) == ["abc def\nghi", "jklmnopqrstu", "v"][:2]
    assert FT.line_pieces(text, 5) == ["abc d", "ghi", "jklmn"]  # "v" alone is too short
    assert all(len(p) <= 5 for p in FT.line_pieces(text, 5))


PLAY = ("ANNA:\nI come to see the sea today.\nAnd so do you.\n\n"
        "BOB:\nNo, I stay at home.\n\n") * 12


def tiny_corpus_with_speakers():
    tok = CharTokenizer.from_text(PLAY)
    ids = torch.tensor(tok.encode(PLAY))
    return Corpus("play", tok, ids, ids)  # the same text for training and validation


def test_speaker_split_and_encoding():
    split = FT.speaker_split(PLAY, 20)
    assert split.speaker == "ANNA"  # the most characters
    assert len(split.held_out) == 2 * round(12 * 0.2) and len(split.train) == 2 * (12 - 2)
    assert "ANNA" not in split.general and "BOB:" in split.general
    tok = CharTokenizer.from_text(PLAY)
    x, y = FT.encode_pieces(["And so", "No"], tok, 8)
    assert tok.decode(x[0, :6].tolist()) == "And so" and int(x[1, 2]) == tok.pad_id
    assert y[0, :5].tolist() == x[0, 1:6].tolist() and (y[0, 5:] == IGNORE).all()
    assert y[1].tolist() == [x[1, 1].item()] + [IGNORE] * 7


def task():
    return FT.speaker_task(tiny_corpus_with_speakers(), 12, general_batches=2, batch_size=4)


def lm():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=task().train_x.max().item() + 5, block_size=24,
                                   n_layer=2, n_head=2, d_model=16)).eval()


@pytest.mark.parametrize("method", ["full", "freeze", "probe", "lora", "prompt"])
def test_every_method_starts_at_the_base_model_and_trains_only_its_part(method):
    t, base = task(), lm()
    config = FT.AdaptConfig(method, steps=3, batch_size=4, lr=1e-2, freeze_below=1, rank=2,
                            prompt_length=4, eval_every=3)
    model, prompt = FT.prepare(base, t, config)
    start = FT.speaker_loss(model, t.held_x, t.held_y, prompt() if prompt is not None else None)
    init = (hard_prompt_vectors(base, init_ids_for(t.hard_prompt, 4)) if method == "prompt"
            else None)  # a soft prompt starts as the text its vectors were copied from
    assert start == FT.speaker_loss(base, t.held_x, t.held_y, init)  # before training: the base
    result, model, prompt = FT.adapt(base, t, config)
    assert result.history[0]["speaker_loss"] == start and len(result.history) == 2
    moved = {n for n, p in model.named_parameters() if not torch.equal(
        p, dict(base.named_parameters()).get(n.replace(".base.", "."), torch.empty(0)))}
    if method == "full":
        assert result.trainable == sum(p.numel() for p in base.parameters())
    if method == "freeze":  # embeddings (and the tied output) and block 0 stay; block 1 moves
        assert not any(n.startswith(("tok_emb", "pos_emb", "blocks.0.")) for n in moved)
        assert any(n.startswith("blocks.1.") for n in moved)
    if method in ("probe", "lora", "prompt"):  # the base weights never move
        assert all(n in ("lm_head.weight",) or "lora_" in n for n in moved), moved
        assert result.final["general_loss"] != result.history[0]["general_loss"] or \
            method == "prompt"
    if method == "prompt":  # the model is frozen: the general loss (read without the prompt)
        assert result.trainable == 4 * 16  # stays bit for bit; k * d_model numbers train
        assert result.final["general_loss"] == result.history[0]["general_loss"]


def test_a_soft_prompt_started_at_the_hard_prompt_scores_like_it():
    t, base = task(), lm()
    k = len(t.hard_prompt)
    model, prompt = FT.prepare(base, t, FT.AdaptConfig("prompt", prompt_length=k))
    hard = FT.speaker_loss(base, t.held_x, t.held_y, hard_prompt_vectors(base, t.hard_prompt))
    assert FT.speaker_loss(model, t.held_x, t.held_y, prompt()) == pytest.approx(hard, abs=1e-6)


def test_adaptation_is_cached_and_a_bad_setting_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    t, base = task(), lm()
    config = FT.AdaptConfig("lora", steps=2, batch_size=4, rank=2, eval_every=1)
    first = FT.adaptation(base, "k", t, config)
    again = FT.adaptation(base, "k", t, config)
    assert not first.cached and again.cached and again.history == first.history
    assert not FT.adaptation(base, "other base", t, config).cached
    damaged_files = list((tmp_path / "runs").glob("*/record.json"))
    assert len(damaged_files) == 2  # base "k" and "other base"
    for damaged in damaged_files:
        damaged.write_text('{"history": [')  # cut off mid-write
    with pytest.warns(RuntimeWarning, match="is damaged"):
        recomputed = FT.adaptation(base, "k", t, config)
    assert not recomputed.cached and recomputed.history == first.history
    with pytest.raises(ValueError, match="method='lora2'"):
        FT.AdaptConfig("lora2")
    with pytest.raises(ValueError, match="mix=1"):
        FT.AdaptConfig(mix=1)


def test_scratch_is_a_fresh_model_and_replay_mixing_changes_the_run():
    t, base = task(), lm()
    scratch, _ = FT.prepare(base, t, FT.AdaptConfig("scratch", seed=5))
    assert not torch.equal(scratch.tok_emb.weight, base.tok_emb.weight)
    plain, _, _ = FT.adapt(base, t, FT.AdaptConfig(steps=2, batch_size=4, eval_every=2))
    mixed, _, _ = FT.adapt(base, t, FT.AdaptConfig(steps=2, batch_size=4, eval_every=2, mix=0.5))
    assert plain.final != mixed.final


def test_mean_interval_against_a_hand_computed_case():
    mean, half = FT.mean_interval([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / 3 ** 0.5)
    with pytest.raises(ValueError, match="1 values"):
        FT.mean_interval([1.0])

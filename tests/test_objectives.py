"""Chapter 2 objectives: prefix LM, span corruption, sentence pairs, distillation, the no-grad bug.

(The foundation's clm_loss / mask_tokens tests live in test_objectives_core.py.)
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab import ModelConfig, TrainConfig, Transformer, train
from lmlab.data import CharTokenizer, Corpus
from lmlab.evaluation import validation_loss
from lmlab.heads import transformer_with_pair_head
from lmlab.objectives import (
    IGNORE_INDEX,
    OBJECTIVES,
    ObjectiveContext,
    bits_per_char,
    check_objective_fits,
    combined_loss,
    distillation_loss,
    mlm_pair_losses,
    mlm_step,
    pair_loss,
    prefix_lm_labels,
    prefix_lm_mask,
    random_partition,
    random_partitions,
    span_corruption,
    span_corruption_batch,
    span_counts,
    span_layout,
    span_source_length,
)

TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .\n:")
LINES = torch.tensor(TOK.encode("a:\nthe cat sat\non the mat\nand the dog\nran off.\n\nb:\n"
                                "so it goes\nand went\n"))  # two speeches, one text of ids


def tiny(**kw) -> ModelConfig:
    base = {"vocab_size": TOK.vocab_size, "block_size": 16, "n_layer": 1, "n_head": 2,
            "d_model": 16}
    base.update(kw)
    return ModelConfig(**base)


def test_bits_per_char_is_nats_over_ln2():
    assert bits_per_char(math.log(65)) == pytest.approx(math.log2(65), abs=1e-12)


def test_prefix_mask_hand_computed():
    mask = prefix_lm_mask(torch.tensor([2, 0]), 4)
    expected_p2 = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert mask.shape == (2, 1, 4, 4)
    assert torch.equal(mask[0, 0], expected_p2)
    assert torch.equal(mask[1, 0], torch.ones(4, 4).tril().bool())  # no prefix: causal
    assert torch.equal(prefix_lm_mask(torch.tensor([4]), 4)[0, 0], torch.ones(4, 4).bool())
    with pytest.raises(ValueError, match="prefix lengths"):
        prefix_lm_mask(torch.tensor([5]), 4)


def test_prefix_labels_keep_only_post_prefix_predictions():
    y = torch.arange(1, 7)[None].repeat(2, 1)  # (2, 6)
    labels = prefix_lm_labels(y, torch.tensor([3, 1]))
    assert labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5, 6]
    assert labels[1].tolist() == [1, 2, 3, 4, 5, 6]


def test_prefix_lm_never_sees_what_it_predicts():
    """Changing tokens x_{t+1..} leaves the logits at every scored position t unchanged."""
    torch.manual_seed(0)
    model = Transformer(tiny(attention="naive")).eval()
    x = torch.randint(0, TOK.n_chars, (1, 12))
    p = torch.tensor([5])
    mask = prefix_lm_mask(p, 12)
    logits = model(x, mask=mask)
    for t in range(4, 11):  # scored positions: t >= p - 1
        x2 = x.clone()
        x2[0, t + 1 :] = (x2[0, t + 1 :] + 7) % TOK.n_chars
        torch.testing.assert_close(model(x2, mask=mask)[0, : t + 1], logits[0, : t + 1],
                                   rtol=0, atol=1e-5)
    x3 = x.clone()
    x3[0, 4] = (x3[0, 4] + 3) % TOK.n_chars  # inside the prefix: position 0 sees it
    assert not torch.allclose(model(x3, mask=mask)[0, 0], logits[0, 0], atol=1e-4)


def test_random_partition_sums_and_is_positive():
    g = torch.Generator().manual_seed(0)
    for total, parts in [(10, 1), (10, 10), (17, 4)]:
        lengths = random_partition(total, parts, g)
        assert sum(lengths) == total and len(lengths) == parts and min(lengths) >= 1
    with pytest.raises(ValueError, match="positive parts"):
        random_partition(3, 4)


def test_span_corruption_reconstructs_the_original():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor(TOK.encode("the quick brown fox jumps over the lazy dog"))
    source, target = span_corruption(ids, TOK, rate=0.2, mean_span=3, generator=g)
    n_noise, n_spans = span_counts(len(ids), 0.2, 3)
    assert (source == TOK.mask_id).sum() == n_spans and (target == TOK.mask_id).sum() == n_spans
    assert len(target) == n_noise + n_spans + 1 and len(source) == len(ids) - n_noise + n_spans + 1
    # fill the k-th [MASK] of the source with the k-th span of the target: the original comes back
    spans = TOK.decode(target[:-1]).split("[MASK]")[1:]
    pieces = TOK.decode(source[:-1]).split("[MASK]")
    rebuilt = "".join(p + s for p, s in zip(pieces, [*spans, ""], strict=True))
    assert rebuilt == TOK.decode(ids)


def test_span_batch_predicts_only_the_target():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, TOK.n_chars, (3, 32), generator=g)
    inputs, labels, prefix_len = span_corruption_batch(x, TOK, 0.15, 3, g)
    assert inputs.shape == labels.shape == (3, 32)
    for row in range(3):
        p = int(prefix_len[row])
        assert inputs[row, p - 1] == TOK.sep_id  # the source ends with [SEP]
        assert (labels[row, : p - 1] == IGNORE_INDEX).all()
        assert labels[row, p - 1] == TOK.mask_id  # the first thing predicted: the first sentinel
        real = labels[row] != IGNORE_INDEX
        assert torch.equal(labels[row, real][:-1], inputs[row, p : p + int(real.sum()) - 1])


def reference_span_layout(x: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor) -> list:
    """Rows of source + target built one span at a time in Python (the layout's definition)."""
    rows = []
    for row, noise_row, keep_row in zip(x.tolist(), noise.tolist(), keep.tolist(), strict=True):
        source, target, start = [], [], 0
        for k, n in zip(keep_row, noise_row, strict=True):
            source += [*row[start : start + k], TOK.mask_id]
            target += [TOK.mask_id, *row[start + k : start + k + n]]
            start += k + n
        rows.append([*source, TOK.sep_id, *target, TOK.sep_id])
    return rows


def test_span_layout_equals_the_span_by_span_construction():
    x = torch.randint(0, TOK.n_chars, (16, 40), generator=torch.Generator().manual_seed(4))
    n_noise, n_spans = span_counts(40, 0.15, 3.0)
    g = torch.Generator().manual_seed(5)
    noise = random_partitions(n_noise, n_spans, 16, g)  # the draws span_layout makes, in order
    keep = random_partitions(40 - n_noise, n_spans, 16, g)
    seq, source_len = span_layout(x, TOK, 0.15, 3.0, torch.Generator().manual_seed(5))
    assert seq.tolist() == reference_span_layout(x, noise, keep)
    assert source_len == 40 - n_noise + n_spans + 1


def test_random_partitions_are_uniform_compositions():
    # A uniform composition of N into k positive parts has P(first part = j) =
    # C(N - j - 1, k - 2) / C(N - 1, k - 1) (the other k - 1 parts compose N - j). With n rows the
    # observed frequency of j has standard deviation sqrt(p (1 - p) / n): allow 4 of them.
    total, parts, n = 10, 3, 4000
    lengths = random_partitions(total, parts, n, torch.Generator().manual_seed(6))
    assert lengths.shape == (n, parts) and (lengths >= 1).all() and (lengths.sum(1) == total).all()
    first = torch.bincount(lengths[:, 0], minlength=total)
    for j in range(1, total - parts + 2):
        p = math.comb(total - j - 1, parts - 2) / math.comb(total - 1, parts - 1)
        assert abs(float(first[j]) / n - p) < 4 * math.sqrt(p * (1 - p) / n), (j, p)
    # the parts are exchangeable: the mean of each is total / parts, within 4 standard errors
    sd = lengths.float().std(0) / math.sqrt(n)
    assert ((lengths.float().mean(0) - total / parts).abs() < 4 * sd).all()


def test_span_batch_statistics():
    # corruption rate and mean span length are fixed by span_counts, not sampled: every row of
    # every batch removes exactly n_noise of its L characters in exactly n_spans spans.
    t, rate = 64, 0.15
    length = span_source_length(t, rate, 3.0)
    n_noise, n_spans = span_counts(length, rate, 3.0)
    x = torch.randint(0, TOK.n_chars, (200, t), generator=torch.Generator().manual_seed(7))
    inputs, labels, prefix_len = span_corruption_batch(x, TOK, rate, 3.0,
                                                       torch.Generator().manual_seed(8))
    target = labels[:, prefix_len[0] - 1 :]  # (B, target length + padding)
    hidden = (target != IGNORE_INDEX) & (target != TOK.mask_id) & (target != TOK.sep_id)
    sentinels = target == TOK.mask_id
    assert (hidden.sum(1) == n_noise).all() and (sentinels.sum(1) == n_spans).all()
    assert hidden.sum(1).float().mean() / length == n_noise / length  # corruption rate
    assert abs(n_noise / length - rate) <= 0.5 / length  # round(L * rate)
    assert abs(n_noise / n_spans - 3.0) < 1.0  # mean span length, round(n_noise / 3) spans
    assert (prefix_len == length - n_noise + n_spans + 1).all()


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_pair_objectives_train_on_the_line_pairs_of_the_text(task, monkeypatch):
    """The MLM + pair inputs are pairs of whole lines drawn from ctx.pair_text: the junction is a
    line break. Windows cut from running text (the old layout) fail every check below."""
    import lmlab.objectives as objectives

    seen = []
    real_mask_tokens = objectives.mask_tokens

    def recording_mask_tokens(ids, *args):  # what the objective masks: the uncorrupted pairs
        seen.append(ids)
        return real_mask_tokens(ids, *args)

    monkeypatch.setattr(objectives, "mask_tokens", recording_mask_tokens)
    torch.manual_seed(0)
    model = transformer_with_pair_head(tiny(causal=False, block_size=19))  # s = 8
    x = torch.randint(0, TOK.n_chars, (64, 19))  # only its shape is used
    ctx = ObjectiveContext(TOK, torch.Generator().manual_seed(1), pair_text=LINES)
    mlm_pair_losses(model, x, ctx, task)
    lines = ["the cat sat", "on the mat", "and the dog", "ran off.", "so it goes", "and went"]
    heads_, tails = {line[:8] for line in lines}, {line[-8:] for line in lines}
    (ids,) = seen
    assert ids.shape == (64, 19)
    for row in ids:
        assert row[0] == TOK.cls_id and row[9] == TOK.sep_id and row[18] == TOK.sep_id
        first, second = row[1:9], row[10:18]
        assert TOK.decode(first[first != TOK.pad_id]) in tails
        assert TOK.decode(second[second != TOK.pad_id]) in heads_
    with pytest.raises(ValueError, match="pair_text"):
        mlm_pair_losses(model, x, ObjectiveContext(TOK, torch.Generator()), task)


def test_pair_and_combined_losses_against_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 0.0]])
    labels = torch.tensor([1, 0])
    expected = -(math.log(0.75) + math.log(math.exp(2) / (math.exp(2) + 1))) / 2
    assert pair_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert combined_loss(torch.tensor(1.0), torch.tensor(2.0), 0.5).item() == 2.0
    with pytest.raises(ValueError, match="pair_weight"):
        combined_loss(torch.tensor(1.0), torch.tensor(2.0), -1.0)


def test_mlm_sop_objective_combines_with_lambda():
    torch.manual_seed(0)
    model = transformer_with_pair_head(tiny(causal=False))
    x = torch.randint(0, TOK.n_chars, (4, 16))
    ctx = ObjectiveContext(TOK, torch.Generator().manual_seed(3), pair_weight=0.7, pair_text=LINES)
    mlm, pair = mlm_pair_losses(model, x, ObjectiveContext(TOK, torch.Generator().manual_seed(3),
                                                           pair_text=LINES), "sop")
    total = OBJECTIVES["mlm_sop"].loss(model, x, x, ctx)
    torch.testing.assert_close(total, mlm + 0.7 * pair, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="pair_head"):
        OBJECTIVES["mlm_sop"].loss(Transformer(tiny(causal=False)), x, x, ctx)


@pytest.mark.parametrize("name", ["prefix", "span", "mlm_sop", "mlm_nsp"])
def test_new_objectives_start_near_uniform_and_backpropagate(name):
    torch.manual_seed(0)
    build = transformer_with_pair_head if name.startswith("mlm_") else Transformer
    model = build(tiny(causal=name in ("prefix", "span"), block_size=32))
    w = torch.randint(0, TOK.n_chars, (8, 33))
    x, y = w[:, :-1], w[:, 1:]  # (B, T) windows and next-token targets
    loss = OBJECTIVES[name].loss(model, x, y,
                                 ObjectiveContext(TOK, torch.Generator().manual_seed(0),
                                                  pair_text=LINES))
    expected = math.log(TOK.vocab_size) + (math.log(2) if name.startswith("mlm_") else 0.0)
    assert loss.item() == pytest.approx(expected, rel=0.05)  # small init: near-uniform outputs
    loss.backward()
    assert model.tok_emb.weight.grad.abs().sum() > 0


def test_distillation_matches_kl_div_times_tau_squared():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    tau = 3.0
    ref = F.kl_div(F.log_softmax(s / tau, -1).view(-1, 11), F.log_softmax(t / tau, -1).view(-1, 11),
                   reduction="batchmean", log_target=True) * tau**2
    torch.testing.assert_close(distillation_loss(s, t, tau), ref, rtol=1e-5, atol=1e-6)
    assert distillation_loss(t, t, tau).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, 0.0)


def test_distillation_gradient_scale_is_independent_of_tau():
    """For small logits d/dz_s KL(p_t^tau || p_s^tau) ~ (z_s - z_t) / (V tau^2): the tau^2 factor
    makes the gradient independent of tau (Hinton et al. 2015); without it, it shrinks as
    1 / tau^2."""
    torch.manual_seed(0)
    s0, t = 0.1 * torch.randn(64, 11), 0.1 * torch.randn(64, 11)
    norms = {}
    for tau in (2.0, 8.0):
        s = s0.clone().requires_grad_()
        distillation_loss(s, t, tau).backward()
        norms[tau] = s.grad.norm().item()
    assert norms[8.0] / norms[2.0] == pytest.approx(1.0, abs=0.05)  # 1/16 without tau^2


def test_no_grad_bug_leaves_every_parameter_unchanged():
    torch.manual_seed(0)
    model = Transformer(tiny(causal=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctx = ObjectiveContext(TOK, torch.Generator().manual_seed(0), mask_rate=0.3)
    x = torch.randint(0, TOK.n_chars, (4, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mlm_step(model, opt, x, ctx, under_no_grad=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    mlm_step(model, opt, x, ctx)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert "tok_emb.weight" in changed and "blocks.0.attn.qkv.weight" in changed


def test_prefix_objective_equals_cross_entropy_on_post_prefix_targets():
    from lmlab.objectives import sample_prefix_lengths

    torch.manual_seed(0)
    model = Transformer(tiny(block_size=12))
    w = torch.randint(0, TOK.n_chars, (3, 13))
    x, y = w[:, :-1], w[:, 1:]
    ctx = ObjectiveContext(TOK, torch.Generator().manual_seed(4))
    loss = OBJECTIVES["prefix"].loss(model, x, y, ctx)
    p = sample_prefix_lengths(3, 12, torch.Generator().manual_seed(4))
    logits = model(x, mask=prefix_lm_mask(p, 12))  # (3, 12, V)
    keep = torch.arange(12)[None, :] >= (p[:, None] - 1)  # (3, 12) scored positions
    ref = F.cross_entropy(logits[keep], y[keep])  # PyTorch on exactly the scored positions
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-6)


def test_pair_objective_losses_are_rescored_exactly_from_the_split_they_came_from():
    """train() draws the pairs of val_loss from the validation text and those of eval_train_loss
    from the training text; evaluation.validation_loss must draw the same ones."""
    text = torch.tensor(TOK.encode(("a:\nthe cat sat\non the mat\nand the dog\nran off.\n\n"
                                    "b:\nso it goes\nand went\nto sea.\n\n") * 12))
    corpus = Corpus("lines", TOK, text[: len(text) * 3 // 4], text[len(text) * 3 // 4 :])
    torch.manual_seed(0)
    model = transformer_with_pair_head(tiny(causal=False, block_size=19))
    tc = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, eval_every=3, eval_batches=2,
                     objective="mlm_sop", progress=False, device="cpu")
    run = train(model, corpus, tc)
    last = run.history[-1]
    assert validation_loss(model, corpus, tc) == pytest.approx(last["val_loss"], abs=1e-6)
    assert validation_loss(model, corpus, tc, "train") == pytest.approx(last["eval_train_loss"],
                                                                         abs=1e-6)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_registry_record_states_what_its_loss_does(name):
    """Each fact of an Objective record is checked against its loss: a wrong flag (a pair head
    the loss does not need, a masking rate it ignores) fails here."""
    facts = OBJECTIVES[name]
    torch.manual_seed(0)
    build = transformer_with_pair_head if facts.pair_head else Transformer
    model = build(tiny(causal=facts.model_causal, block_size=32))
    w = torch.randint(0, TOK.n_chars, (8, 33))
    x, y = w[:, :-1], w[:, 1:]  # (B, T)

    def loss(rate, m=model):
        ctx = ObjectiveContext(TOK, torch.Generator().manual_seed(0), mask_rate=rate,
                               pair_text=LINES)
        return facts.loss(m, x, y, ctx).item()

    # uses_mask_rate: the same draws at another rate select other positions, another loss
    assert (loss(0.15) != loss(0.5)) == facts.uses_mask_rate
    # pair_head: without one the loss refuses the model, with a clear message
    plain = Transformer(tiny(causal=facts.model_causal, block_size=32))
    if facts.pair_head:
        with pytest.raises(ValueError, match="pair_head"):
            loss(0.15, plain)
    else:
        loss(0.15, plain)
    # causal: the model the chapter builds fits; the other attention fits only where None
    check_objective_fits(name, facts.model_causal)
    if facts.causal is None:
        check_objective_fits(name, not facts.model_causal)
    else:
        with pytest.raises(ValueError, match="does not fit"):
            check_objective_fits(name, not facts.causal)
    assert facts.predicts and facts.name == name

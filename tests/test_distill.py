"""Knowledge distillation, checked against PyTorch's KL divergence, the analytic gradient and the
one training loop (alpha = 0 is label-only training, bit for bit)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab import ModelConfig, TrainConfig, Transformer, train
from lmlab.distill import (
    distill_train,
    distillation_objective,
    distilled_run,
    logit_matching_limit,
    soft_target_view,
    soft_targets,
    temperature_sweep,
)
from lmlab.experiments import run_experiment


def _logits(seed, shape=(2, 5, 11)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 5.0])
def test_soft_term_equals_torch_kl_div_times_t_squared(temperature):
    s, t = _logits(0), _logits(1)
    v = s.size(-1)
    reference = F.kl_div(F.log_softmax(s.reshape(-1, v) / temperature, -1),
                         F.softmax(t.reshape(-1, v) / temperature, -1),
                         reduction="batchmean") * temperature**2
    y = torch.randint(0, v, s.shape[:2], generator=torch.Generator().manual_seed(2))
    soft = distillation_objective(s, t, y, temperature, alpha=1.0)
    torch.testing.assert_close(soft, reference, rtol=1e-5, atol=1e-6)
    # the mixture: alpha T^2 KL + (1 - alpha) CE, CE as F.cross_entropy
    ce = F.cross_entropy(s.reshape(-1, v), y.reshape(-1))
    mixed = distillation_objective(s, t, y, temperature, alpha=0.3)
    torch.testing.assert_close(mixed, 0.3 * reference + 0.7 * ce, rtol=1e-5, atol=1e-6)
    assert torch.equal(distillation_objective(s, None, y, temperature, alpha=0.0),
                       F.cross_entropy(s.reshape(-1, v), y.reshape(-1)))


def test_soft_gradient_is_the_analytic_one_and_shrinks_as_one_over_t_squared():
    s, t = _logits(3, (1, 1, 16))[0, 0], _logits(4, (1, 1, 16))[0, 0]  # (V,)
    y = torch.zeros(1, 1, dtype=torch.long)
    norms = {}
    for temperature in (1.0, 3.0, 50.0, 100.0, 200.0):
        z = s.clone().requires_grad_(True)
        loss = distillation_objective(z[None, None], t[None, None], y, temperature, alpha=1.0)
        (grad,) = torch.autograd.grad(loss, z)
        # d(T^2 KL)/dz_s = T^2 (p_s^T - p_t^T) / T = T (p_s^T - p_t^T)
        analytic = temperature * (soft_targets(s, temperature) - soft_targets(t, temperature))
        # float32: each probability carries an error of order eps = 1.2e-7, scaled by T
        torch.testing.assert_close(grad, analytic, rtol=1e-4, atol=4 * 1.2e-7 * temperature)
        norms[temperature] = float((grad / temperature**2).norm())  # the gradient without T^2
        if temperature == 200.0:
            # the next term of the expansion in 1/T is O(max|z| / T) relative to the first: with
            # max|z| about 2.5 that is ~1.3% here; allowed 5%
            limit = logit_matching_limit(s, t)
            assert float((grad - limit).norm()) < 0.05 * float(limit.norm())
    # without the T^2 factor: doubling T divides the gradient by ~4 in the large-T regime
    assert norms[50.0] / norms[100.0] == pytest.approx(4.0, rel=0.05)
    assert norms[100.0] / norms[200.0] == pytest.approx(4.0, rel=0.05)


def test_objective_rejects_bad_input():
    s = _logits(0)
    y = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha=1.5"):
        distillation_objective(s, s, y, 2.0, alpha=1.5)
    with pytest.raises(ValueError, match="teacher's logits"):
        distillation_objective(s, None, y, 2.0, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(s, 0.0)


def _configs(tiny_corpus, steps=6):
    mc = ModelConfig(vocab_size=tiny_corpus.tokenizer.vocab_size, block_size=8, n_layer=1,
                     n_head=2, d_model=16)
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=3,
                     eval_batches=2, progress=False, device="cpu")
    return mc, tc


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_alpha_zero_is_label_only_training_bit_for_bit(tiny_corpus, label_smoothing):
    mc, tc = _configs(tiny_corpus)
    tc = tc.replace(label_smoothing=label_smoothing)
    torch.manual_seed(0)
    a = Transformer(mc)
    b = Transformer(mc)
    b.load_state_dict(a.state_dict())
    teacher = Transformer(mc.replace(d_model=32))
    run_a = train(a, tiny_corpus, tc)
    run_b = distill_train(b, teacher, tiny_corpus, tc, temperature=3.0, alpha=0.0)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(run_a.history) == strip(run_b.history)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_distillation_moves_the_student_toward_the_teacher(tiny_corpus):
    # a teacher whose predictions have nothing to do with the text (random, large weights): a
    # student that learns from it ends closer to it than one that learns from the labels
    mc, tc = _configs(tiny_corpus, steps=40)
    torch.manual_seed(1)
    teacher = Transformer(mc.replace(d_model=32, init_std=0.3)).eval()
    x = tiny_corpus.val[:64].reshape(8, 8)  # (8, 8)

    def kl_to_teacher(student):
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(student(x), -1).flatten(0, 1),
                                  F.softmax(teacher(x), -1).flatten(0, 1), reduction="batchmean"))

    kls = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(tc.seed)
        student = Transformer(mc)
        distill_train(student, teacher, tiny_corpus, tc.replace(lr=1e-2), temperature=1.0,
                      alpha=alpha)
        kls[alpha] = kl_to_teacher(student.eval())
    assert kls[1.0] < 0.5 * kls[0.0], kls


def test_distilled_run_is_cached_and_keyed_by_t_alpha_and_teacher(tiny_corpus, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc = _configs(tiny_corpus)
    teacher = run_experiment(mc.replace(d_model=32), tc, tiny_corpus, keep_model=True)
    first = distilled_run(mc, tc, tiny_corpus, teacher, temperature=2.0, alpha=0.5)
    again = distilled_run(mc, tc, tiny_corpus, teacher, temperature=2.0, alpha=0.5)
    assert not first.cached and again.cached and first.history == again.history
    other_t = distilled_run(mc, tc, tiny_corpus, teacher, temperature=4.0, alpha=0.5)
    assert not other_t.cached and other_t.history != first.history
    labels = distilled_run(mc, tc, tiny_corpus, None, alpha=0.0)
    same = distilled_run(mc, tc, tiny_corpus, teacher, temperature=4.0, alpha=0.0)
    assert same.cached and same.history == labels.history  # alpha=0: T and teacher play no part
    sweep = temperature_sweep(mc, tc, tiny_corpus, teacher, [2.0, 4.0], 0.5, seeds=(0,))
    assert sweep[2.0][0].cached and sweep[4.0][0].history == other_t.history
    with pytest.raises(ValueError, match="needs a teacher"):
        distilled_run(mc, tc, tiny_corpus, None, alpha=0.5)


def test_distill_train_resumed_from_a_checkpoint_equals_the_uninterrupted_run(tiny_corpus,
                                                                               tmp_path):
    """distill_train is lmlab.train with the distillation loss, so it has the loop's checkpoints
    and resume (and grad_accum, keep_best, patience, compile), which its own copy of the loop
    refused: a run resumed from step 3 ends with the history and weights of the uninterrupted
    run, exactly on the CPU (dropout on, so the RNG states in the checkpoint matter)."""
    mc, tc = _configs(tiny_corpus)
    mc = mc.replace(dropout=0.1)
    tc = tc.replace(grad_accum=2, checkpoint_every=3, keep_best=True,
                    checkpoint_dir=str(tmp_path / "a"))
    torch.manual_seed(1)
    teacher = Transformer(mc.replace(d_model=32)).eval()

    def student():
        torch.manual_seed(tc.seed)
        return Transformer(mc)

    whole = student()
    full = distill_train(whole, teacher, tiny_corpus, tc, temperature=2.0, alpha=0.7)
    assert full.best_path is not None and full.best_path.exists()
    resumed_model = student()
    resumed = distill_train(resumed_model, teacher, tiny_corpus,
                            tc.replace(checkpoint_dir=str(tmp_path / "b")), temperature=2.0,
                            alpha=0.7, resume=tmp_path / "a" / "step_3.pt")

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert strip(resumed.history) == strip(full.history)
    for p, q in zip(whole.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_distill_train_refuses_what_it_does_not_do(tiny_corpus):
    mc, tc = _configs(tiny_corpus)
    student = Transformer(mc)
    with pytest.raises(ValueError, match="alpha=1.5"):
        distill_train(student, student, tiny_corpus, tc, alpha=1.5)
    with pytest.raises(ValueError, match="needs a teacher"):
        distill_train(student, None, tiny_corpus, tc, alpha=0.5)
    with pytest.raises(ValueError, match="objective='mlm'"):
        distill_train(student, student, tiny_corpus, tc.replace(objective="mlm"))
    small_teacher = Transformer(mc.replace(block_size=4))
    with pytest.raises(ValueError, match="context"):
        distill_train(student, small_teacher, tiny_corpus, tc)


def test_soft_target_view(tiny_corpus):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tiny_corpus.tokenizer.vocab_size, block_size=8,
                                    n_layer=1, n_head=2, d_model=16, init_std=0.5)).eval()
    tok = tiny_corpus.tokenizer
    view = soft_target_view(model, tok, "not to be", [0.5, 1.0, 4.0])
    ids = torch.tensor([tok.encode("not to be")[-8:]])  # the last block_size characters
    with torch.no_grad():
        expected = F.softmax(model(ids)[0, -1, : tok.n_chars], -1)
    torch.testing.assert_close(view.probs[1.0], expected)
    for p in view.probs.values():
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    entropies = [view.entropy(t) for t in (0.5, 1.0, 4.0)]
    assert entropies[0] < entropies[1] < entropies[2]  # a higher T flattens the distribution
    top = view.top(1.0, k=3)
    assert [c for c, _ in top] == [tok.chars[i] for i in expected.topk(3).indices.tolist()]
    with pytest.raises(ValueError, match="context is empty"):
        soft_target_view(model, tok, "", [1.0])

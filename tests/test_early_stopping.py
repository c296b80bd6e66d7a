"""Early stopping: the patience rule of lmlab.train, best.pt, and restoring the best model."""

from __future__ import annotations

import pytest
import torch

from lmlab import ModelConfig, TrainConfig, Transformer, train
from lmlab.checkpoint import restore_best
from lmlab.data import CharTokenizer, Corpus
from lmlab.evaluation import validation_loss
from lmlab.experiments import run_experiment
from lmlab.regularization import early_stop_point


@pytest.fixture(scope="module")
def random_letters() -> Corpus:
    """Random text over 8 letters: 400 training tokens a small model memorizes quickly, and an
    unrelated validation text, so the validation loss falls, bottoms out and climbs again."""
    tok = CharTokenizer("abcdefgh")
    g = torch.Generator().manual_seed(0)
    return Corpus("random8", tok, torch.randint(0, 8, (400,), generator=g),
                  torch.randint(0, 8, (400,), generator=g))


def _configs(tmp_path, **train_changes):
    mc = ModelConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, d_model=32)
    tc = TrainConfig(steps=150, batch_size=8, lr=1e-2, warmup_steps=5, schedule="constant",
                     weight_decay=0.0, eval_every=5, eval_batches=2, progress=False, device="cpu",
                     keep_best=True, checkpoint_dir=str(tmp_path / "ckpt"))
    return mc, tc.replace(**train_changes)


def _train(mc, tc, corpus):
    torch.manual_seed(tc.seed)
    return train(Transformer(mc), corpus, tc)


def test_patience_stops_where_the_rule_says_and_follows_the_full_run(tmp_path, random_letters):
    mc, tc = _configs(tmp_path / "full")
    full = _train(mc, tc, random_letters)
    steps, losses = full.column("val_loss")
    best_step, stop_step = early_stop_point(steps, losses, patience=4)
    assert stop_step < tc.steps  # the validation loss does climb on this data
    early = _train(mc, tc.replace(patience=4, checkpoint_dir=str(tmp_path / "early")),
                   random_letters)
    assert early.stopped_early and not full.stopped_early
    assert early.history[-1]["step"] == stop_step
    assert early_stop_point(*early.column("val_loss"), patience=4) == (best_step, stop_step)
    # same seed on the CPU: the early run is exactly the first part of the full run
    assert early.column("val_loss")[1] == losses[: len(early.evals)]


def test_restored_best_model_scores_the_best_validation_loss(tmp_path, random_letters):
    mc, tc = _configs(tmp_path, patience=4)
    run = _train(mc, tc, random_letters)
    assert run.best_path is not None and run.best_path.name == "best.pt"
    final_val = validation_loss(run.model, random_letters, tc)
    assert final_val == pytest.approx(run.final_val_loss, abs=1e-6)  # same batches as train()
    model = Transformer(mc)
    record = restore_best(model, run.best_path)
    steps, losses = run.column("val_loss")
    assert record["val_loss"] == run.best_val_loss == min(losses)
    assert record["step"] == steps[losses.index(min(losses))]
    assert validation_loss(model, random_letters, tc) == pytest.approx(run.best_val_loss, abs=1e-6)
    assert run.best_val_loss < run.final_val_loss - 0.01  # so restoring did change something


def test_run_experiment_keep_best_restores_to_the_best_validation_loss(tmp_path, monkeypatch,
                                                                       random_letters):
    """The chapter's flow: a cached early-stopping run keeps best.pt, and the model restored from
    it scores the run's best validation loss."""
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))
    mc, tc = _configs(tmp_path, steps=30, keep_best=False, checkpoint_dir=None)
    result = run_experiment(mc, tc, random_letters, keep_best=True)
    again = run_experiment(mc, tc, random_letters, keep_best=True)
    assert again.cached and again.best_path == result.best_path
    model = Transformer(mc)
    assert restore_best(model, again.best_path)["val_loss"] == pytest.approx(again.best_val_loss)
    assert validation_loss(model, random_letters, tc) == pytest.approx(again.best_val_loss,
                                                                       abs=1e-6)

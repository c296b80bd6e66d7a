"""The distillation / RL explorer reads (or trains) one run per setting and redraws its curves,
with the reference and the earlier settings behind them."""

from __future__ import annotations

import pytest
import torch

from lmlab import ModelConfig, TrainConfig
from lmlab.data import CharTokenizer, Corpus
from lmlab.experiments import run_experiment
from lmlab.rl import PolicyGradientConfig
from lmlab.widgets.distill_rl import distill_rl_explorer


def _setup():
    tok = CharTokenizer("abcdefgh")
    g = torch.Generator().manual_seed(0)
    corpus = Corpus("random8", tok, torch.randint(0, 8, (400,), generator=g),
                    torch.randint(0, 8, (400,), generator=g))
    mc = ModelConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, d_model=16)
    tc = TrainConfig(steps=6, batch_size=4, warmup_steps=1, eval_every=3, eval_batches=1,
                     progress=False, device="cpu")
    teacher = run_experiment(mc.replace(d_model=32), tc, corpus, keep_model=True)
    rl = PolicyGradientConfig(prompt="a", length=6, batch=4, steps=3, lr=1e-3)
    return mc, tc, corpus, teacher, rl


def _lines(ax, suffix=""):
    return [ln for ln in ax.lines if ln.get_label().endswith(suffix)]


def test_each_control_changes_its_panel(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc, corpus, teacher, rl = _setup()
    e = distill_rl_explorer(mc, tc, corpus, teacher, teacher, rl, temperatures=(1.0, 4.0),
                            alphas=(0.0, 0.9), betas=(0.0, 0.5))
    assert e.error is None
    for control, value, panel in (("temperature", 4.0, 0), ("alpha", 0.0, 0), ("beta", 0.0, 1)):
        png = e.view.image.value
        before = [list(ln.get_ydata()) for ln in e.figure.axes[panel].lines]
        e.set(**{control: value})
        assert e.error is None, control
        assert e.view.image.value != png, control
        after = [list(ln.get_ydata()) for ln in e.figure.axes[panel].lines]
        assert after != before, control
    assert "T=4" in e.figure.axes[0].get_title()


def test_reference_and_earlier_settings_stay_drawn(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc, corpus, teacher, rl = _setup()
    e = distill_rl_explorer(mc, tc, corpus, teacher, teacher, rl, temperatures=(1.0, 4.0),
                            alphas=(0.0, 0.9), betas=(0.0, 0.5))
    first_reward = [list(ln.get_ydata()) for ln in e.figure.axes[1].lines]
    ylims = [ax.get_ylim() for ax in e.figure.axes]
    e.set(beta=0.0)
    e.set(temperature=4.0)
    for i, ax in enumerate(e.figure.axes):
        ref = _lines(ax, "(reference)")
        assert len(ref) == 1, i  # the defaults' curve, in every panel
        earlier = _lines(ax, "(earlier)")
        assert len(earlier) == 1 and "beta=0," not in ref[0].get_label(), i
        lo, hi = ax.get_ylim()
        assert lo <= ylims[i][0] and hi >= ylims[i][1]  # the axes only grow
    assert list(_lines(e.figure.axes[1], "(reference)")[0].get_ydata()) == first_reward[0]


def test_explorer_rejects_a_default_that_is_not_an_option(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc, corpus, teacher, rl = _setup()
    with pytest.raises(ValueError, match="not among the options"):
        distill_rl_explorer(mc, tc, corpus, teacher, teacher, rl, defaults={"beta": 0.3})


def test_a_new_setting_draws_its_curves_while_it_trains(tmp_path, monkeypatch):
    """Previews while the student and the policy train: the figure shows the rows so far (the
    student's curve before the RL panels have theirs), and the finished figure replaces them."""
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc, corpus, teacher, rl = _setup()
    e = distill_rl_explorer(mc, tc, corpus, teacher, teacher, rl, temperatures=(1.0, 4.0),
                            alphas=(0.0, 0.9), betas=(0.0, 0.5))
    e.preview_interval = 0.0  # draw every row, however long a preview takes to draw
    monkeypatch.setattr("lmlab.widgets.PREVIEW_COST_RATIO", 0.0)
    shown = []
    draw_preview = e.view.preview

    def record(draw):
        draw_preview(draw)
        shown.append([len(ax.lines) for ax in e.view.shown.axes])

    e.view.preview = record
    e.set(temperature=4.0, beta=0.0)  # a new student and a new policy: both train
    assert e.error is None
    assert len(shown) >= tc.steps + rl.steps  # one preview per training row at least
    # early previews: the student's panel has curves while the reward panel has only the
    # reference behind it; by the last one the policy's own curve is there as well
    assert shown[0][1] < shown[-1][1]
    assert e.view.shown is e.figure  # the finished figure is what the page shows

"""The regularization explorer reads (or trains) one run per setting and redraws its curves."""

from __future__ import annotations

import pytest
import torch

from lmlab import ModelConfig, TrainConfig
from lmlab.data import CharTokenizer, Corpus
from lmlab.widgets.regularization import regularization_explorer


def _setup():
    tok = CharTokenizer("abcdefgh")
    g = torch.Generator().manual_seed(0)
    corpus = Corpus("random8", tok, torch.randint(0, 8, (400,), generator=g),
                    torch.randint(0, 8, (400,), generator=g))
    mc = ModelConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, d_model=16)
    tc = TrainConfig(steps=10, batch_size=4, warmup_steps=1, eval_every=5, eval_batches=1,
                     progress=False, device="cpu")
    return mc, tc, corpus


def _line(explorer, label_start):
    lines = [ln for ln in explorer.figure.axes[0].lines if ln.get_label().startswith(label_start)]
    assert len(lines) == 1
    return list(lines[0].get_ydata())


def test_each_control_changes_the_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc, corpus = _setup()
    e = regularization_explorer(mc, tc, corpus, data_fractions=(1.0, 0.5))
    assert e.error is None
    changes = [("dropout", 0.4, "dropout=0.4"), ("weight_decay", 1.0, "wd=1"),
               ("label_smoothing", 0.3, "smoothing=0.3"), ("data_fraction", 0.5, "data=0.5")]
    for control, value, in_title in changes:
        png, val, train = e.view.image.value, _line(e, "validation"), _line(e, "training")
        assert len(val) == len(train) == 2  # evaluations at steps 5 and 10
        e.set(**{control: value})
        assert e.error is None, control
        assert e.view.image.value != png, control
        assert _line(e, "validation") != val and _line(e, "training") != train, control
        assert in_title in e.figure.axes[0].get_title()


def test_explorer_rejects_a_default_that_is_not_an_option(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc, corpus = _setup()
    with pytest.raises(ValueError, match="not among the options"):
        regularization_explorer(mc, tc, corpus, defaults={"dropout": 0.33})


def test_reference_and_earlier_settings_stay_drawn_on_fixed_axes(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    mc, tc, corpus = _setup()
    e = regularization_explorer(mc, tc, corpus, data_fractions=(1.0, 0.5))
    reference_val = _line(e, "validation")
    ylim = e.figure.axes[0].get_ylim()
    e.set(dropout=0.4)
    e.set(weight_decay=1.0)
    ax = e.figure.axes[0]
    ref = [ln for ln in ax.lines if ln.get_label().endswith("(reference)")]
    earlier = [ln for ln in ax.lines if ln.get_label().endswith("(earlier)")]
    assert len(ref) == 1 and list(ref[0].get_ydata()) == reference_val  # the defaults' curve
    assert len(earlier) == 1 and "p=0.4" in earlier[0].get_label()      # the setting before
    lo, hi = ax.get_ylim()
    assert lo <= ylim[0] and hi >= ylim[1]  # the axes only grow: the reference stays in view
    e.set(dropout=0.0, weight_decay=0.0)    # back to the defaults: the axes do not shrink back
    lo2, hi2 = e.figure.axes[0].get_ylim()
    assert lo2 <= lo and hi2 >= hi

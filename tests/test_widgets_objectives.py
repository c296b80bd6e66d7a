"""The objectives explorer trains (or reads back) one run per setting and redraws."""

import pytest

from lmlab import ModelConfig, TrainConfig
from lmlab.data import char_corpus
from lmlab.experiments import objective_run
from lmlab.objectives import OBJECTIVES
from lmlab.widgets.objectives import objectives_explorer


def test_changing_objective_and_rate_changes_the_curve(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    corpus = char_corpus()
    mc = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                     d_model=16)
    tc = TrainConfig(steps=6, batch_size=4, warmup_steps=1, eval_every=3, eval_batches=1,
                     progress=False, device="cpu")
    e = objectives_explorer(mc, tc, corpus, objective="mlm")
    assert e.error is None
    png, ydata = e.view.image.value, list(e.figure.axes[0].lines[1].get_ydata())
    for change in ({"mask_rate": 0.4}, {"objective": "mlm_sop"}, {"pair_weight": 2.0}):
        e.set(**change)
        assert e.error is None, e.error
        assert e.view.image.value != png
        new = list(e.figure.axes[0].lines[1].get_ydata())
        assert new != ydata
        png, ydata = e.view.image.value, new
    # lambda weighs the pair loss: only the objectives with a pair head use it, and their loss
    # adds bits per pair to bits per masked character
    assert not e.controls["pair_weight"].disabled and "per pair" in e.figure.axes[0].get_ylabel()
    for name in ("clm", "mlm", "prefix", "span", "mlm_nsp"):
        e.controls["objective"].value = name  # as a learner picks it: the observers fire
        assert e.controls["pair_weight"].disabled == (not OBJECTIVES[name].pair_head), name
        assert ("per pair" in e.figure.axes[0].get_ylabel()) == OBJECTIVES[name].pair_head, name
    # settings an objective ignores are reset, so the same run is read back from the cache
    a = objective_run(mc, tc, "clm", mask_rate=0.4, corpus=corpus)
    b = objective_run(mc, tc, "clm", mask_rate=0.15, corpus=corpus)
    assert a.key == b.key and b.cached
    with pytest.raises(ValueError, match="objective"):
        objective_run(mc, tc, "gpt", corpus=corpus)

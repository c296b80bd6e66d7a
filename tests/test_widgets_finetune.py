"""The fine-tuning explorer reads (or trains) one adaptation per pick and keeps earlier picks."""

from __future__ import annotations

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.data import CharTokenizer, Corpus
from lmlab.finetune import AdaptConfig, speaker_task
from lmlab.model import Transformer
from lmlab.widgets.finetune import finetune_explorer

PLAY = ("ANNA:\nI come to see the sea today.\nAnd so do you.\n\n"
        "BOB:\nNo, I stay at home.\n\n") * 12


def _setup():
    tok = CharTokenizer.from_text(PLAY)
    ids = torch.tensor(tok.encode(PLAY))
    task = speaker_task(Corpus("play", tok, ids, ids), 12, general_batches=1, batch_size=4)
    torch.manual_seed(0)
    base = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1,
                                   n_head=2, d_model=16)).eval()
    methods = {"fine-tune": AdaptConfig("full", steps=4, batch_size=4, eval_every=2),
               "LoRA r=2": AdaptConfig("lora", steps=4, batch_size=4, rank=2, eval_every=2),
               "soft prompt k=2": AdaptConfig("prompt", steps=4, batch_size=4, lr=0.1,
                                              prompt_length=2, eval_every=2)}
    return base, task, methods


def _lines(explorer, panel, suffix):
    return [ln for ln in explorer.figure.axes[panel].lines if ln.get_label().endswith(suffix)]


def test_each_pick_redraws_with_the_reference_and_earlier_picks_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    base, task, methods = _setup()
    e = finetune_explorer(base, "base", task, methods)
    assert e.error is None and len(e.figure.axes) == 2
    reference = list(e.figure.axes[0].lines[-1].get_ydata())
    assert len(reference) == 3  # steps 0, 2, 4
    png = e.view.image.value
    e.set(method="LoRA r=2")
    assert e.error is None and e.view.image.value != png
    e.set(method="soft prompt k=2")
    for panel in (0, 1):
        ref = _lines(e, panel, "(reference)")
        assert len(ref) == 1 and ref[0].get_label().startswith("fine-tune")
        earlier = _lines(e, panel, "(earlier)")
        assert len(earlier) == 1 and earlier[0].get_label().startswith("LoRA r=2")
    assert list(_lines(e, 0, "(reference)")[0].get_ydata()) == reference
    # the soft prompt leaves the general loss where the base model has it, at every step
    general = list(e.figure.axes[1].lines[-1].get_ydata())
    assert len(set(general)) == 1
    assert "soft prompt k=2 (32 trained)" in e.figure.axes[0].lines[-1].get_label()  # k x d_model


def test_a_default_that_is_not_a_method_is_named():
    base, task, methods = _setup()
    with pytest.raises(ValueError, match="'LoRA r=8' is not among"):
        finetune_explorer(base, "base", task, methods, default="LoRA r=8")

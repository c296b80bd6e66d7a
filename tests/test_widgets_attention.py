"""The attention explorer redraws its one figure when layer, head or text change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab.attention import attention_maps
from lmlab.data import CharTokenizer
from lmlab.widgets.attention import MEAN, attention_explorer


def _setup():
    tok = CharTokenizer.from_text("abcdefgh ")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2,
                                    d_model=16, pos="rope")).eval()
    return model, tok


def _image_data(explorer) -> np.ndarray:
    return np.asarray(explorer.figure.axes[0].images[0].get_array())


def test_changing_layer_head_and_text_redraws_the_map():
    model, tok = _setup()
    e = attention_explorer(model, tok, "abc defg")
    assert e.error is None
    assert "lmlab-explorer" in e.widget._dom_classes
    png, data = e.view.image.value, _image_data(e)
    assert data.shape == (8, 8)
    e.set(layer=2)
    assert e.error is None and e.view.image.value != png
    assert not np.array_equal(_image_data(e), data)
    png, data = e.view.image.value, _image_data(e)
    e.set(head=2)
    assert e.view.image.value != png and not np.array_equal(_image_data(e), data)
    e.set(head=MEAN)  # layer 2, mean of its heads' maps
    maps = attention_maps(model, torch.tensor(tok.encode("abc defg")))  # (L, H, T, T)
    shown = torch.tensor(_image_data(e)).float()
    torch.testing.assert_close(shown, maps[1].mean(0), atol=1e-6, rtol=1e-5)
    e.set(text="hgf")
    assert e.error is None and _image_data(e).shape == (3, 3)
    e.set(text="xyz")  # not in the vocabulary: shown as an error, the figure stays
    assert isinstance(e.error, ValueError)


def test_bad_arguments_fail_clearly():
    model, tok = _setup()
    with pytest.raises(ValueError, match="layer"):
        attention_explorer(model, tok, "abc", layer=3)
    with pytest.raises(ValueError, match="head"):
        attention_explorer(model, tok, "abc", head=5)

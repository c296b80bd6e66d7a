"""Chapter 8's explorers redraw when a control changes, from the tested package functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab.compress import pruned_copy
from lmlab.evaluation import evaluate
from lmlab.widgets.scaling import pruning_explorer, scaling_law_explorer


def _curves():
    n = [1e3, 3e3, 1e4, 3e4, 1e5]
    tokens = [1e3, 1e4, 1e5]
    # L = 1 + 5 N^-0.3 + 20 D^-0.4: a law in N at each D
    return n, [(tokens, [1 + 5 * m ** -0.3 + 20 * d ** -0.4 for d in tokens]) for m in n]


def test_scaling_explorer_refits_on_the_points_picked():
    n, curves = _curves()
    e = scaling_law_explorer(n, curves)
    assert e.error is None
    fitted = e.figure.axes[0].lines[1]  # the fitted curve (no held-out points at first)
    x, y = fitted.get_xdata(), fitted.get_ydata()
    np.testing.assert_allclose(y, 1 + 20 * 1e5 ** -0.4 + 5 * x ** -0.3, rtol=1e-6)
    png = e.view.image.value
    e.set(tokens=1e3)
    assert e.error is None and e.view.image.value != png
    assert "D = 1,000" in e.figure.axes[0].get_title()
    e.set(fit_on=3)
    labels = [ln.get_label() for ln in e.figure.axes[0].lines]
    assert "held out" in labels
    held = next(ln for ln in e.figure.axes[0].lines if ln.get_label() == "held out")
    assert list(held.get_xdata()) == n[3:]


def test_scaling_explorer_refuses_too_few_models():
    n, curves = _curves()
    with pytest.raises(ValueError, match="at least 3"):
        scaling_law_explorer(n[:2], curves[:2])


def test_pruning_explorer_scores_pruned_copies():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, d_model=16))
    x = torch.randint(0, 12, (4, 8), generator=torch.Generator().manual_seed(1))
    batches = [(x, x)]
    e = pruning_explorer(model, batches, sparsities=(0.0, 0.5, 0.9), references={"int8": 2.0})
    assert e.error is None
    curve = e.figure.axes[0].lines[0].get_ydata()
    assert curve[0] == pytest.approx(evaluate(model, batches))
    assert curve[2] == pytest.approx(evaluate(pruned_copy(model, 0.9)[0], batches))
    e.set(kind="rows", sparsity=0.9)
    assert e.error is None
    assert e.figure.axes[0].lines[0].get_ydata()[2] == pytest.approx(
        evaluate(pruned_copy(model, 0.9, "rows")[0], batches))
    assert "rows" in e.figure.axes[0].get_title()

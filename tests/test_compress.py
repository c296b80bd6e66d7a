"""int8 weight quantization and magnitude pruning against hand-computed values and torch."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab import compress as Q


def test_int8_by_hand():
    w = torch.tensor([[1.27, -0.5, 0.01], [0.1, 0.2, -0.254]])
    q, s = Q.quantize_int8(w, "tensor")
    assert float(s) == pytest.approx(0.01)
    assert q.tolist() == [[127, -50, 1], [10, 20, -25]]
    q, s = Q.quantize_int8(w, "channel")
    assert s.flatten().tolist() == pytest.approx([0.01, 0.002])
    assert q.tolist() == [[127, -50, 1], [50, 100, -127]]


def test_int8_matches_torch_quantize_per_channel():
    """torch's own symmetric per-channel int8 (zero points 0) gives the same integers."""
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    q, s = Q.quantize_int8(w, "channel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated, still here
        ref = torch.quantize_per_channel(w, s.flatten().double(), torch.zeros(16, dtype=torch.long),
                                         0, torch.qint8)
    assert torch.equal(ref.int_repr(), q)
    # the round-trip error is at most half a step, per row
    assert ((Q.dequantize_int8(q, s) - w).abs() <= s / 2 + 1e-7).all()


def test_per_channel_is_finer_when_one_row_is_large():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1)) * 0.02
    w[0] *= 50  # one outlier row coarsens the per-tensor grid for all rows
    errors = {g: (Q.dequantize_int8(*Q.quantize_int8(w, g)) - w).abs().mean()
              for g in Q.GRANULARITIES}
    assert errors["channel"] < errors["tensor"] / 5


def test_quantized_copy_reports_the_rounding_error_of_every_block_weight():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, d_model=16))
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight[3] *= 40  # one outlier row: the per-tensor grid coarsens
    report = {}
    for g in Q.GRANULARITIES:
        quantized, report[g] = Q.quantized_copy(model, g)
        errors = [(dict(quantized.named_modules())[name].weight - lin.weight).flatten().double()
                  for name, lin in Q.block_linears(model)]
        e = torch.cat(errors)  # by hand, over every block Linear weight
        assert report[g]["max_error"] == pytest.approx(float(e.abs().max()), rel=1e-12)
        assert report[g]["rms_error"] == pytest.approx(float(e.pow(2).mean().sqrt()), rel=1e-9)
    # the worst error sits in the outlier row, whose scale both granularities share; the RMS
    # error averages over every row and tells them apart
    assert report["channel"]["max_error"] <= report["tensor"]["max_error"]
    assert report["channel"]["rms_error"] < report["tensor"]["rms_error"] / 2


def test_magnitude_masks():
    w = torch.tensor([[0.1, -3.0, 0.2], [4.0, 0.05, -1.0], [0.3, 0.3, 0.3]])
    keep = Q.magnitude_mask(w, 1 / 3, "unstructured")  # prune the 3 smallest |w|
    assert keep.tolist() == [[False, True, False], [True, False, True], [True, True, True]]
    rows = Q.magnitude_mask(w, 1 / 3, "rows")  # the row of smallest norm: the last
    assert rows.tolist() == [[True] * 3, [True] * 3, [False] * 3]
    with pytest.raises(ValueError, match="sparsity"):
        Q.magnitude_mask(w, 1.5)


def test_pruned_and_quantized_copies_leave_the_original_alone():
    model = Transformer(ModelConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, d_model=16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, masks = Q.pruned_copy(model, 0.5, "unstructured")
    assert Q.sparsity_of(pruned) == pytest.approx(0.5, abs=1e-3)
    assert Q.sparsity_of(model) == 0.0
    quantized, size = Q.quantized_copy(model, "channel")
    n = sum(lin.weight.numel() for _, lin in Q.block_linears(model))
    rows = sum(lin.weight.shape[0] for _, lin in Q.block_linears(model))
    assert size["fp32"] == 4 * n and size["int8"] == n + 4 * rows
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randint(0, 20, (4, 8))
    batches = [(x, x)]
    Q.fine_tune_pruned(pruned, masks, batches, steps=3)
    assert Q.sparsity_of(pruned) >= 0.5 - 1e-3  # pruned weights stay zero while fine-tuning

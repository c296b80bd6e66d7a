"""Memory of a training step: counted from shapes, measured by the tracker, sharded by ZeRO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab import ModelConfig, Transformer
from lmlab import memory as M


def _config(**changes):
    config = ModelConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, d_model=16)
    return config.replace(**changes)


@pytest.mark.parametrize("changes", [{}, {"bias": False}, {"tie_weights": False}, {"pos": "rope"},
                                     {"mlp_ratio": 2, "n_layer": 3}])
def test_parameter_count_matches_the_model(changes):
    config = _config(**changes)
    model = Transformer(config)
    assert M.parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_tracker_counts_new_storages_and_frees_them():
    with M.MemoryTracker() as mem:
        a = torch.empty(1000)            # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        view = a[:10]                     # a view: no new memory
        a.add_(1)                         # in place: no new memory
        del b
        assert mem.alive() == 4000
        c = torch.empty(250)              # 1000 bytes
    assert mem.peak == 8000 and mem.current == 5000
    del view, c


def test_tracker_ignores_storages_made_before_it():
    weight = torch.randn(100, 100)
    with M.MemoryTracker() as mem:
        y = weight.t() @ torch.ones(100)  # the transpose is a view of an old storage
    assert mem.current == 2 * 400  # ones(100) and the product, 400 bytes each
    del y


def test_tracker_counts_storages_made_from_data_but_not_borrowed_ones():
    """torch.tensor(data) builds its storage outside the dispatcher (the mode sees only
    aten.lift_fresh, whose output is its input); from_numpy and as_tensor borrow numpy's memory."""
    array = np.ones(1000, dtype=np.float32)
    with M.MemoryTracker() as mem:
        step = torch.tensor(0.0)                  # 4 bytes, as AdamW makes its step counters
        values = torch.tensor([1.0, 2.0, 3.0])    # 12 bytes
        shared = torch.from_numpy(array)          # numpy's 4000 bytes: not new
        same = torch.as_tensor(array)             # the same memory again
        assert mem.alive() == 16
        copied = torch.tensor(array)              # a copy: 4000 new bytes
        assert mem.alive() == 4016
        del values
        assert mem.alive() == 4004                # freed like any other storage
    assert mem.peak == 4016
    del step, shared, same, copied


def test_activation_formula_equals_what_autograd_saves():
    """Sum of the distinct storages autograd saves (a saved_tensors_hooks count, the reference)
    equals the formula exactly, token and position ids included."""
    config = _config()
    model = Transformer(config)
    x = torch.randint(0, 23, (3, 12))
    seen = {}

    def pack(t):
        seen.setdefault(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved = sum(n for key, n in seen.items() if key not in params)
    assert saved == M.activation_bytes(config, 3, 12)["total"]
    del loss


def test_measured_step_matches_the_formula():
    config = _config()
    x, y = torch.randint(0, 23, (2, 4, 12))
    measured = M.measure_training_step(config, x, y)
    predicted = M.training_memory(config, 4, 12)
    assert measured.parameters == predicted["parameters"]
    assert measured.gradients == predicted["gradients"]
    # the formula leaves out AdamW's step counters: one 4-byte tensor per parameter tensor
    n_tensors = len(list(Transformer(config).parameters()))
    assert measured.optimizer_state == predicted["optimizer state"] + 4 * n_tensors
    # the formula counts the input ids, which the caller allocated before measuring
    ids = x.numel() * x.element_size()
    assert abs(measured.activations - (predicted["activations"] - ids)) <= 8  # the loss scalars
    assert max(predicted["activations"], predicted["optimizer state"]) < measured.peak
    assert measured.peak <= predicted["total"]


def test_checkpointing_saves_activations_and_keeps_gradients():
    config = _config(n_layer=3)
    x, y = torch.randint(0, 23, (2, 4, 12))
    plain = Transformer(config)
    torch.manual_seed(0)
    checkpointed = M.checkpoint_blocks(Transformer(config))
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    full = M.measure_training_step(config, x, y)
    saved = M.measure_training_step(config, x, y, checkpointing=True)
    expected = M.activation_bytes(config, 4, 12, checkpointing=True)["total"]
    assert abs(saved.activations - (expected - x.numel() * x.element_size())) <= 8
    assert saved.activations < full.activations / 2


def test_sharded_memory_per_rank():
    n, w = 1000, 4
    assert M.sharded_memory_per_rank(n, w, 0)["total"] == 16 * n
    assert M.sharded_memory_per_rank(n, w, 1)["total"] == 8 * n + 8 * n / w
    assert M.sharded_memory_per_rank(n, w, 2)["total"] == 4 * n + 12 * n / w
    assert M.sharded_memory_per_rank(n, w, 3)["total"] == 16 * n / w
    assert M.sharded_memory_per_rank(n, 1, 3) == M.sharded_memory_per_rank(n, 1, 0)
    with pytest.raises(ValueError, match="stage"):
        M.sharded_memory_per_rank(n, w, 4)
    with pytest.raises(ValueError, match="world_size"):
        M.sharded_memory_per_rank(n, 0, 1)


def test_activation_formula_refuses_what_it_does_not_count():
    with pytest.raises(ValueError, match="sdpa"):
        M.activation_bytes(_config(attention="naive"), 2)

"""Evaluation mode is restored after every eval-mode helper, also when the model raises inside."""

from __future__ import annotations

import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab.attention import attention_maps
from lmlab.evaluation import evaluate, predict_probabilities
from lmlab.generate import generate_ids
from lmlab.heads import frozen_features, pair_head_accuracy, transformer_with_pair_head
from lmlab.modes import eval_mode

CONFIG = ModelConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, d_model=16, causal=False)


class Broken(RuntimeError):
    pass


def _break(model: torch.nn.Module) -> torch.nn.Module:
    """Make the model's first block raise in every forward pass (hidden states, logits, heads)."""

    def fail(*args):
        raise Broken("forward failed")

    model.blocks[0].register_forward_pre_hook(fail)
    return model


def test_eval_mode_restores_training_mode_when_the_block_raises():
    model = torch.nn.Dropout(0.5).train()
    with pytest.raises(Broken), eval_mode(model):
        assert not model.training
        raise Broken
    assert model.training
    with eval_mode(model.eval()):
        pass
    assert not model.training  # an eval model stays in eval mode


ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 1]])  # (1, T)
CALLS = {
    "train.evaluate": lambda m: evaluate(m, [(ids, ids)]),
    "generate_ids": lambda m: generate_ids(m, ids[:, :2], 3),
    "attention_maps": lambda m: attention_maps(m, ids[0]),
    "frozen_features": lambda m: frozen_features(m, ids, torch.ones_like(ids, dtype=torch.bool)),
    "predict_probabilities": lambda m: predict_probabilities(m, [(ids, ids)]),
    "pair_head_accuracy": lambda m: pair_head_accuracy(
        m, ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros(len(ids), dtype=torch.long)),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_helpers_leave_a_training_model_training_after_an_exception(name):
    """Before the fix each of these left the model in eval mode (dropout silently off for the
    rest of training) when the forward pass raised."""
    if name == "pair_head_accuracy":
        model = transformer_with_pair_head(CONFIG)
    else:
        model = Transformer(CONFIG.replace(causal=name == "generate_ids"))
    _break(model).train()
    with pytest.raises(Broken):
        CALLS[name](model)
    assert model.training and all(m.training for m in model.modules())

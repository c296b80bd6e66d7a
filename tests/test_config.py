"""Config validation: bad values fail at construction with a message naming field, value and fix."""

import pytest

from lmlab import ModelConfig, TrainConfig


def test_valid_defaults_construct():
    mc = ModelConfig(vocab_size=65)
    assert mc.head_dim == mc.d_model // mc.n_head
    tc = TrainConfig()
    assert tc.final_lr == pytest.approx(tc.lr / 10)


@pytest.mark.parametrize(
    ("kwargs", "field", "hint"),
    [
        (dict(d_model=130, n_head=4), "d_model=130", "multiple of n_head=4"),
        (dict(dropout=1.0), "dropout=1.0", "[0.0, 1.0)"),
        (dict(dropout=-0.1), "dropout=-0.1", "[0.0, 1.0)"),
        (dict(pos="alibi"), "pos='alibi'", "'rope'"),
        (dict(attention="flash"), "attention='flash'", "'sdpa'"),
        (dict(n_layer=0), "n_layer=0", "integer >= 1"),
        (dict(vocab_size=65.0), "vocab_size=65.0", "integer"),
    ],
)
def test_model_config_errors_name_field_value_and_fix(kwargs, field, hint):
    base = dict(vocab_size=65)
    base.update(kwargs)
    with pytest.raises(ValueError) as err:
        ModelConfig(**base)
    message = str(err.value)
    assert f"ModelConfig.{field}" in message
    assert hint in message


@pytest.mark.parametrize(
    ("kwargs", "field", "hint"),
    [
        (dict(lr=0.0), "lr=0.0", "positive"),
        (dict(lr=-1e-3), "lr=-0.001", "positive"),
        (dict(optimizer="adamax"), "optimizer='adamax'", "'adamw'"),
        (dict(schedule="cyclic"), "schedule='cyclic'", "'cosine'"),
        (dict(warmup_steps=50, steps=10), "warmup_steps=50", "at most steps=10"),
        (dict(objective="xlnet"), "objective='xlnet'", "'clm'"),
        (dict(betas=(0.9, 1.0)), "betas=(0.9, 1.0)", "[0, 1)"),
        (dict(checkpoint_every=10), "checkpoint_dir=None", "folder"),
        (dict(device="tpu"), "device='tpu'", "'cuda'"),
        (dict(grad_accum=0), "grad_accum=0", ">= 1"),
    ],
)
def test_train_config_errors_name_field_value_and_fix(kwargs, field, hint):
    with pytest.raises(ValueError) as err:
        TrainConfig(**kwargs)
    assert f"TrainConfig.{field}" in str(err.value)
    assert hint in str(err.value)


def test_replace_validates_again():
    tc = TrainConfig()
    assert tc.replace(lr=3e-3).lr == 3e-3
    with pytest.raises(ValueError, match="lr"):
        tc.replace(lr=0)

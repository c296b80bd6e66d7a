"""Config validation: bad values fail at construction with a message naming field, value and fix."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (TrainConfig, dict(lr=True), "lr=True"),
        (ModelConfig, dict(vocab_size=65, bias="no"), "bias='no'"),
        (ModelConfig, dict(vocab_size=65, causal=1), "causal=1"),
        (ModelConfig, dict(vocab_size=65, tie_weights="yes"), "tie_weights='yes'"),
        (ModelConfig, dict(vocab_size=65, scale_residual_init=None), "scale_residual_init=None"),
        (TrainConfig, dict(compile="true"), "compile='true'"),
        (TrainConfig, dict(progress=0), "progress=0"),
        (TrainConfig, dict(keep_best="no", checkpoint_dir="x"), "keep_best='no'"),
        (TrainConfig, dict(seed=2**70), f"seed={2**70}"),
        (TrainConfig, dict(device="cuda:abc"), "device='cuda:abc'"),
        (TrainConfig, dict(checkpoint_dir=123), "checkpoint_dir=123"),
        (TrainConfig, dict(betas=(True, 0.99)), "betas=(True, 0.99)"),
        (TrainConfig, dict(eps=10**400), "eps="),
    ],
)
def test_holes_in_validation_are_closed(cls, kwargs, field):
    """Each of these was accepted before (lr=True trained at lr 1.0, bias='no' built biases) or
    failed deep in torch or pathlib."""
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert f"{cls.__name__}.{field}" in str(err.value)


def test_checkpoint_dir_may_be_a_path_and_is_kept_as_text(tmp_path):
    tc = TrainConfig(checkpoint_dir=tmp_path / "ckpt")
    assert tc.checkpoint_dir == str(tmp_path / "ckpt")  # plain data: checkpoints store configs


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1),
    st.text(max_size=12), st.sampled_from(["auto", "cpu", "cuda:0", "cuda:x", "rope", "sgd",
                                           "cosine", "mlm", "bfloat16", "sdpa", ""]),
    st.lists(st.floats(min_value=0, max_value=1), max_size=3),
    st.tuples(st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1)),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(field=st.sampled_from(_fields(ModelConfig)), value=ANY_VALUE)
def test_any_model_config_value_builds_or_names_its_field(field, value):
    kwargs = {"vocab_size": 65, field: value}
    try:
        ModelConfig(**kwargs)
    except ValueError as err:
        assert f"{field}=" in str(err), str(err)  # the field itself, or the rule that ties it


@settings(max_examples=300, deadline=None, derandomize=True)
@given(field=st.sampled_from(_fields(TrainConfig)), value=ANY_VALUE)
def test_any_train_config_value_builds_or_names_its_field(field, value):
    try:
        TrainConfig(**{field: value})
    except ValueError as err:
        assert f"{field}=" in str(err), str(err)

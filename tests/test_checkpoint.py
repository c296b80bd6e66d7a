"""Checkpoint files: atomic writes, damaged files named and skipped, never loaded half-way."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmlab.checkpoint import (
    CheckpointDamaged,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lmlab.paths import atomic_write


def _payload(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((64,), float(step))}}


DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "not a checkpoint": lambda b: b"hello, this is text",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, damage):
    """Before the fix latest_checkpoint returned the damaged newest file and loading it raised
    EOFError / RuntimeError / UnpicklingError (one of them wrongly about weights_only)."""
    for step in (3, 6, 9):
        save_checkpoint(_payload(step), tmp_path / f"step_{step}.pt")
    bad = tmp_path / "step_9.pt"
    bad.write_bytes(DAMAGE[damage](bad.read_bytes()))
    with pytest.warns(RuntimeWarning, match="step_9.pt"):
        found = latest_checkpoint(tmp_path)
    assert found == tmp_path / "step_6.pt"
    assert load_checkpoint(found)["step"] == 6
    with pytest.raises(CheckpointDamaged, match=r"step_9.pt is damaged") as err:
        load_checkpoint(bad)
    assert "weights_only" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_file_without_weights_is_damaged_and_no_file_is_not(tmp_path):
    torch.save({"step": 1}, tmp_path / "step_1.pt")
    with pytest.raises(CheckpointDamaged, match="no model weights"):
        load_checkpoint(tmp_path / "step_1.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "step_2.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert latest_checkpoint(tmp_path) is None


def test_atomic_write_leaves_nothing_behind_when_the_write_fails(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"  # the previous content is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary file

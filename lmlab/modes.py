"""Switching a model to evaluation mode for a block, and back, whatever happens inside."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block (dropout off), then ``model.train(was_training)`` in a
    ``finally``: an exception or an interrupt inside never leaves a training model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

"""Data parallelism on 2 CPU processes (gloo): the averaged gradient is the full-batch one."""

from __future__ import annotations

import pytest
import torch

from lmlab import ModelConfig, Transformer
from lmlab import parallel as P


def test_two_processes_average_to_the_full_batch_gradient():
    config = ModelConfig(vocab_size=19, block_size=8, n_layer=1, n_head=2, d_model=16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 19, (2, 4, 8), generator=g)
    ranks = P.data_parallel_gradients(config, x, y, world_size=2, seed=3)
    torch.manual_seed(3)
    reference = P.batch_gradients(Transformer(config), x, y)
    for name, ref in reference.items():
        # fp32, one extra rounding from the sum over 2 shards: 1e-6 relative
        for rank in ranks:
            torch.testing.assert_close(rank["manual"][name], ref, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(rank["ddp"][name], ref, rtol=1e-5, atol=1e-7)
    # each shard's own gradient is not the full one: the all-reduce did the work
    assert not torch.allclose(ranks[0]["local"]["tok_emb.weight"], reference["tok_emb.weight"])


def test_unequal_shards_are_refused():
    config = ModelConfig(vocab_size=19, block_size=8, n_layer=1, n_head=2, d_model=16)
    x = torch.zeros(3, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="divisible"):
        P.data_parallel_gradients(config, x, x, world_size=2)

"""Data parallelism on one machine: W processes, one shard of the batch each, gradients averaged.

    rank r computes g_r = grad of (1/|B_r|) sum_{i in B_r} loss_i    on its shard B_r of the batch
    all-reduce:  g = (1/W) sum_r g_r                                 (every rank gets the same g)

With equal shards (|B_r| = |B| / W) the average of the shard means is the mean over the whole
batch, so g equals the gradient one process computes on the whole batch, up to float summation
order. :func:`average_gradients` writes the all-reduce out with ``torch.distributed``;
``torch.nn.parallel.DistributedDataParallel`` does the same in buckets, overlapped with backward.

:func:`data_parallel_gradients` spawns the processes (``gloo`` backend, CPU) and returns what each
computed both ways; the worker is a module-level function because ``torch.multiprocessing.spawn``
must import it in the new processes.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import ModelConfig
from .model import Transformer


def batch_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of the mean next-token cross-entropy over the batch x, y (B, T), by name."""
    model.zero_grad(set_to_none=True)
    logits = model(x)  # (B, T, V)
    nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def average_gradients(model: nn.Module) -> None:
    """All-reduce every gradient (sum over ranks), then divide by the world size: in place."""
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def shard(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of the batch dimension (equal shares required)."""
    if x.size(0) % world_size:
        raise ValueError(f"batch of {x.size(0)} rows does not split into {world_size} equal "
                         "shards: use a batch size divisible by the world size.")
    return x.chunk(world_size)[rank]


def _worker(rank: int, world_size: int, port: int, config: dict, seed: int, folder: str) -> None:
    """One rank: the hand-written all-reduce, then DDP, on this rank's shard; saves both."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        data = torch.load(Path(folder) / "batch.pt")
        x, y = shard(data["x"], rank, world_size), shard(data["y"], rank, world_size)
        torch.manual_seed(seed)
        model = Transformer(ModelConfig(**config))
        local = batch_gradients(model, x, y)
        average_gradients(model)
        manual = {name: p.grad.detach().clone() for name, p in model.named_parameters()}

        ddp = DistributedDataParallel(model)  # broadcasts rank 0's weights: the same here
        model.zero_grad(set_to_none=True)
        logits = ddp(x)  # (B / W, T, V)
        nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        by_ddp = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        torch.save({"local": local, "manual": manual, "ddp": by_ddp},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_parallel_gradients(config: ModelConfig, x: torch.Tensor, y: torch.Tensor,
                            world_size: int = 2, seed: int = 0) -> list[dict]:
    """Spawn ``world_size`` CPU processes (gloo); each builds ``Transformer(config)`` after
    ``torch.manual_seed(seed)``, takes its shard of x, y (B, T) and returns, by parameter name,
    ``local`` (its shard's gradient), ``manual`` (after :func:`average_gradients`) and ``ddp``
    (DistributedDataParallel's). One dict per rank."""
    shard(x, 0, world_size)  # fail here, with the clear message, not inside a child process
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"x": x, "y": y}, Path(folder) / "batch.pt")
        mp.spawn(_worker, args=(world_size, free_port(), config.to_dict(), seed, folder),
                 nprocs=world_size, join=True)
        return [torch.load(Path(folder) / f"rank{r}.pt") for r in range(world_size)]

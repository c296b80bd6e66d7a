"""Data-parallel training under ``torchrun``: one process per device, gradients averaged by DDP.

``torchrun --nproc_per_node W ...`` starts W copies of the same command and tells each its place
through environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``). Each process (rank r) holds a full copy of the model and trains on its share of
every batch; :class:`~torch.nn.parallel.DistributedDataParallel` all-reduces the gradients during
backward, so every rank applies the same update:

    g = (1/W) sum_{r=0..W-1} g_r,   g_r = grad of the mean loss over rank r's b = B/W windows
      = grad of the mean loss over all B windows          (equal shares)

which is the gradient one process computes on the whole batch of B windows.

Batches. ``TrainConfig.batch_size`` is the *global* batch B, so a config means the same training
on any number of processes. Every rank draws the B start positions of the global batch from one
generator seeded alike on all ranks and keeps rows ``[r*b, (r+1)*b)`` (``BatchSampler(rows=...)``):
the ranks together see exactly the windows one process would. The sampler's state is then the
same on every rank, so the one state rank 0 saves in a checkpoint serves any number of processes.

Randomness inside the objective (dropout, MLM masks) is per rank: rank r seeds it with
``seed + r * RANK_SEED_STRIDE`` (:mod:`lmlab.device`), so two ranks never draw the same masks
for different windows. Rank 0 keeps the single-process seeds. With such randomness a W-process
run equals a one-process run in distribution, not bit for bit; without it (CLM, no dropout) they
agree to float rounding.

Rank 0 alone evaluates (and shares the numbers, so every rank's history and early-stopping
decision agree), writes checkpoints and logs and shows the progress bar. Checkpoints hold the
unwrapped model's ``state_dict`` (no ``module.`` prefix): a checkpoint written by W processes
resumes in one and the other way round. On resume, ranks > 0 reseed their objective randomness
from (seed, rank, step), since a checkpoint stores rank 0's generators only.

Backends: ``nccl`` on CUDA (rank r uses GPU ``LOCAL_RANK``), ``gloo`` on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .data import BatchSampler
from .device import RANK_SEED_STRIDE, RESUME_SEED_STRIDE, SEED_OFFSETS, pick_device
from .objectives import OBJECTIVES

DDP_OBJECTIVES = tuple(sorted(name for name, o in OBJECTIVES.items() if o.through_forward))
"""The objectives data-parallel training (and so the command line) can run, by name: those whose
record says they reach the model only through ``model(...)``
(:attr:`lmlab.objectives.Objective.through_forward`). DDP synchronizes gradients of what runs
through its ``forward``; the pair objectives call ``model.hidden`` and a pair head directly,
which it would not see."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run, and the few things the training loop
    asks of it (see :func:`lmlab.train`'s ``dist`` argument)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that evaluates, writes and prints."""
        return self.rank == 0

    @property
    def seed_offset(self) -> int:
        """Added to the seeds of per-rank randomness (dropout, objective masks); 0 on rank 0."""
        return self.rank * RANK_SEED_STRIDE

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size``: ``[r*b, (r+1)*b)``, b = B / W."""
        if batch_size % self.world_size:
            raise ValueError(
                f"TrainConfig.batch_size={batch_size} is invalid: expected a multiple of the "
                f"{self.world_size} processes, since it is the global batch that they share "
                f"(e.g. {self.world_size * max(1, batch_size // self.world_size)}).")
        b = batch_size // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def sampler(self, data: torch.Tensor, block_size: int, batch_size: int,
                generator: torch.Generator) -> BatchSampler:
        """A sampler that draws the global batch from ``generator`` and keeps this rank's rows."""
        return BatchSampler(data, block_size, batch_size, self.device, generator,
                            rows=self.rows(batch_size))

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """``model`` in DistributedDataParallel (which broadcasts rank 0's parameters, so every
        rank starts from the same weights)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: torch.Tensor) -> float:
        """The mean over ranks of a scalar (each rank's mean loss over its equal share is
        averaged into the global batch's mean loss). Every rank gets the same number, so a
        non-finite loss stops every rank at the same step."""
        total = value.detach().float().reshape(1).clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)  # gloo has no AVG
        return float(total) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (one all-reduce): a Ctrl-C that
        reaches one rank stops all of them at the same step boundary, none left waiting."""
        value = torch.tensor([float(flag)], device=self.device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def share(self, row: dict, keys: tuple[str, ...]) -> None:
        """Copy ``row[key]`` for ``keys`` from rank 0 into every rank's ``row`` (evaluations run on
        rank 0 alone; the others need the numbers for early stopping and their history)."""
        values = torch.tensor([row.get(k, math.nan) for k in keys], dtype=torch.float64,
                              device=self.device)
        torch_dist.broadcast(values, src=0)
        row.update(zip(keys, values.tolist(), strict=True))

    def reseed_after_resume(self, objective_gen: torch.Generator, seed: int, step: int) -> None:
        """A checkpoint holds rank 0's generators: ranks > 0 draw fresh objective and dropout
        randomness from (seed, rank, step) instead of reusing rank 0's."""
        if self.rank == 0:
            return
        base = seed + self.seed_offset + RESUME_SEED_STRIDE * step
        objective_gen.manual_seed(base + SEED_OFFSETS["objective"])
        torch.manual_seed(base)


def sync_gradients(model: nn.Module, micro: int, micro_batches: int):
    """The context for the forward pass of micro-batch ``micro`` of ``micro_batches``: DDP's
    ``no_sync()`` on all but the last, so gradients accumulate locally and are all-reduced once
    per optimizer step. DDP decides in ``forward`` whether the backward that follows all-reduces,
    so covering the forward is enough. A model that is not DDP gets a no-op context."""
    if micro < micro_batches - 1 and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def from_environment(device: str = "auto") -> DistContext | None:
    """Join the process group torchrun set up; ``None`` when not started by torchrun (or with
    one process), which is plain single-process training.

    ``device`` is ``TrainConfig.device``: on CUDA each rank takes GPU ``LOCAL_RANK`` with the
    ``nccl`` backend, on CPU ``gloo``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    where = pick_device(device)
    if where.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                "start at most one process per GPU (torchrun --nproc_per_node).")
        where = torch.device("cuda", local_rank)
        torch.cuda.set_device(where)
        backend = "nccl"
    elif where.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"TrainConfig.device={device!r} gives {where.type}, which "
                         "DistributedDataParallel cannot use: use 'cuda' (nccl) or 'cpu' (gloo).")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, where, backend)


def shutdown() -> None:
    """Leave the process group (at the end of a run, on every rank)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()

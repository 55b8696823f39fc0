"""Data-parallel training across processes (torchrun): process-group setup from torchrun's
environment, seeded per-rank sharding of each global batch, and a differentiable gather so a
contrastive loss sees the negatives of every rank. Depends on torch alone.

Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) every function here is the
single-process identity, so the training loops use them unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, tracks and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def context() -> Context:
    """The current process's place in the process group (rank 0 of 1 when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_env() -> Context:
    """Joins the process group torchrun describes in RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT:
    NCCL when CUDA is present (one GPU per local rank), gloo on CPU. A no-op outside torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return context()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return context()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch_indices: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's contiguous slice of a global batch. Every rank draws the same seeded epoch order,
    so the slices partition the global batch (as DistributedSampler partitions an epoch) and the
    gathered embeddings come back in the single-process order."""
    if not ctx.active:
        return batch_indices
    if len(batch_indices) % ctx.world_size:
        raise ValueError(f"global batch of {len(batch_indices)} does not split evenly over {ctx.world_size} processes; "
                         "choose a batch size divisible by the number of processes")
    per_rank = len(batch_indices) // ctx.world_size
    return batch_indices[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenates `x` from every rank along dim 0, in rank order, with gradients flowing back to
    each rank's own slice (the backward pass sums the incoming gradients over ranks). Since every
    rank computes the same loss from the gathered tensor, that sum is world_size times the
    single-process gradient, which DistributedDataParallel's gradient averaging divides out."""
    ctx = context()
    if not ctx.active:
        return x
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(x.contiguous(), 0, dist.group.WORLD)


def mean_over_ranks(value: float) -> float:
    """Average of a Python number over ranks (for logging a loss that differs between ranks)."""
    ctx = context()
    if not ctx.active:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / ctx.world_size


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `module` when running under torchrun, else `module` itself.

    On CUDA, batch norm is synchronised across ranks (SimCLR's global batch norm, and the same
    statistics as one process on the global batch). torch's SyncBatchNorm has no CPU kernel, so on
    CPU (gloo) each rank normalises with its own shard's statistics."""
    ctx = context()
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        index = device.index if device.index is not None else ctx.local_rank
        return DistributedDataParallel(module, device_ids=[index])
    return DistributedDataParallel(module)


def barrier() -> None:
    if context().active:
        dist.barrier()

"""torchrun / DistributedDataParallel helpers.

Launched by ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them
everything here degrades to a single process, so the training loop calls the same functions either way.
Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: torch.device | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (idempotent); otherwise a 1-process DistInfo."""
    if not launched_by_torchrun():
        return DistInfo()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def info() -> DistInfo:
    """The current process's place, without initialising anything."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        dist.get_backend())
    return DistInfo()


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of a (globally identical) permutation: every ``world_size``-th element.

    All ranks get equally many items (the tail that does not divide evenly is dropped), so every rank
    runs the same number of steps and collective calls never wait forever.
    """
    usable = len(indices) - len(indices) % world_size
    return indices[:usable][rank::world_size]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a no-op in one process)."""
    if info().enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if info().enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if info().enabled:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

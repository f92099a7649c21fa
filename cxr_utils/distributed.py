"""torchrun / data-parallel helpers.

Launched by ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them
everything here degrades to a single process, so the training loop calls the same functions either way.
Backend: NCCL on CUDA, gloo on CPU.

The training loop does not wrap its networks in ``DistributedDataParallel``: StyleGAN2's lazy R1 and
path-length steps need a gradient of a gradient, which the wrapper supports badly. Instead every rank
calls :func:`average_gradients` after each backward and before each optimiser step, which is what the
wrapper does (without overlapping the all-reduce with the backward pass).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import CXRError, RunError

T = TypeVar("T")


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


def batch_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of a global batch of ``batch_size`` (which ``world_size`` divides).

    Every rank uses the same permutation, so the ranks' shares of one global batch together are exactly
    the batch one process would take.
    """
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
    local = batch_size // world_size
    return slice(rank * local, (rank + 1) * local)


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


def average_gradients(module: nn.Module) -> None:
    """Replace every parameter gradient of ``module`` by its mean over ranks (a no-op in one process).

    One flattened all-reduce per dtype. Parameters without a gradient are skipped; which ones have none
    must be the same on every rank (it is: it depends on the graph, not on the data).
    """
    if not info().enabled:
        return
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in module.parameters():
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


def run_on_main(fn: Callable[[], T]) -> T:
    """Call ``fn`` on rank 0 only; its (picklable) result, or its exception, reaches every rank.

    For work that must happen once, such as creating or deleting a run folder: an error raised there
    is raised on every rank, so no rank waits forever for one that gave up.
    """
    if not info().enabled:
        return fn()
    return _from_main(fn, run_elsewhere=False)


def main_first(fn: Callable[[], T]) -> T:
    """Call ``fn`` on rank 0, then on the other ranks (e.g. so that only rank 0 fills a cache).

    If it raises on rank 0 the others do not call it and raise the same error.
    """
    if not info().enabled:
        return fn()
    return _from_main(fn, run_elsewhere=True)


def _from_main(fn: Callable[[], T], run_elsewhere: bool) -> T:
    message: list = [None]
    result: T | None = None
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result = fn()
            message[0] = ("ok", None if run_elsewhere else result)
        except Exception as exc:  # noqa: BLE001 - handed to the other ranks, then re-raised
            error = exc
            shareable = exc if isinstance(exc, CXRError) else RunError(
                f"rank 0 failed: {type(exc).__name__}: {exc}".splitlines()[0])
            message[0] = ("error", shareable)
    dist.broadcast_object_list(message, src=0)
    status, payload = message[0]
    if error is not None:
        raise error
    if status == "error":
        raise payload
    if dist.get_rank() == 0:
        return result  # type: ignore[return-value]
    return fn() if run_elsewhere else payload


def same_on_all_ranks(value: object) -> bool:
    """Whether a picklable ``value`` is equal on every rank (True in one process)."""
    if not info().enabled:
        return True
    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

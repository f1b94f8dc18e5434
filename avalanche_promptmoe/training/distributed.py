"""Data-parallel helpers over ``torch.distributed`` (initialised by Avalanche's ``DistributedHelper``
in the experiment scripts under ``torchrun``). Everything is a no-op in a single process."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["all_reduce_grads_", "all_reduce_sum_", "barrier", "is_distributed", "is_main_process", "rank",
           "world_size"]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised (possibly with a single rank)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients over ranks (data parallelism: each rank saw ``1/world`` of the batch)."""
    n = world_size()
    if n == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(n)


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (counts, correct/total)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t

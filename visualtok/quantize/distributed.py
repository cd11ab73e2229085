"""Synchronising quantizer statistics across processes.

Every check happens at call time (``torch.distributed`` may be initialised after the quantizer is
built, e.g. by accelerate), never cached at construction. Without a process group these are no-ops.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "all_reduce_sum_", "broadcast_", "is_main_process"]


def is_distributed() -> bool:
    """True when a default process group is initialised now."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over all ranks (no-op without a process group)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s copy (no-op without a process group)."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor

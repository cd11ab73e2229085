"""``ResumableSampler``: a seeded, rank-sharded, resumable order over a map-style dataset.

Every epoch is a permutation drawn from ``(seed, epoch)`` alone, split across ranks by striding, so
the order does not depend on the number of workers or on what ran before. The sampler yields
``(index, item_seed)`` pairs: datasets use ``item_seed`` for their random crops/flips, so a sample
is the same whether it is drawn in one go or after a resume, in any worker.

``state_dict() -> {"epoch", "index"}`` is the position (in samples of this rank's share); the loop
advances it by the batches it actually consumed, never by what workers prefetched.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "item_generator"]

_MIX = 0x9E3779B97F4A7C15


def _mix(*values: int) -> int:
    """Deterministic 63-bit hash of integers (splitmix-style), independent of Python's hash seed."""
    h = 0
    for v in values:
        h = (h ^ (int(v) + _MIX + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def item_generator(item_seed: int) -> torch.Generator:
    """A CPU generator for one item's random augmentation."""
    return torch.Generator().manual_seed(int(item_seed))


class ResumableSampler(Sampler):
    """Yields ``(index, item_seed)`` for this rank, epoch after epoch, from a saved position."""

    def __init__(
        self,
        num_items: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        min_per_rank: int = 1,
    ) -> None:
        if num_items < 1:
            raise ValueError("ResumableSampler needs a non-empty dataset (got 0 items)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.min_per_rank = max(int(min_per_rank), 1)  # tiny datasets repeat to fill one batch
        self.epoch = 0
        self.index = 0  # position inside this rank's share of the current epoch

    def __len__(self) -> int:
        """Samples of this rank per epoch."""
        n = (
            self.num_items // self.world_size
            if self.drop_last
            else -(-self.num_items // self.world_size)
        )
        return max(n, self.min_per_rank)

    def _order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        n = len(self) * self.world_size
        if n > len(order):  # pad by wrapping (tiny datasets, or drop_last=False)
            order = (order * (n // len(order) + 1))[:n]
        return order[:n][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The rest of the current epoch from ``self.index`` (position unchanged)."""
        order, epoch = self._order(self.epoch), self.epoch
        items = [
            (order[pos], _mix(self.seed, epoch, pos, self.rank, 1))
            for pos in range(self.index, len(order))
        ]
        return iter(items)

    def advance(self, num_samples: int) -> None:
        """Record that ``num_samples`` of this rank's samples were consumed."""
        self.index += num_samples

    def next_epoch(self) -> None:
        """The loader ran out: start the next epoch from its beginning."""
        self.epoch += 1
        self.index = 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "num_items": self.num_items,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("num_items", self.num_items) != self.num_items:
            raise ValueError(
                f"sampler state is for a dataset of {state['num_items']} items; this one has "
                f"{self.num_items} (different data path?)"
            )
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"sampler state was saved with {state['world_size']} processes; now "
                f"{self.world_size}. "
                "Exact resume needs the same number of processes."
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

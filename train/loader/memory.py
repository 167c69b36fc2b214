"""Memory: batches from tensors already in memory, with the shard loader's interface.

For feeding a method without decoding (the ``make bench`` comparison of the loop against a bare loop)
and for tests of the loop. The order is a seeded permutation per epoch, so ``epoch(e, skip)`` resumes
exactly like the shard loader.
"""
from __future__ import annotations

from typing import Iterator

import torch

from augment.seeds import mix


class MemoryLoader:
    """``epoch(e, skip)`` -> ``(images[idx], idx)`` batches of a permutation seeded by (seed, epoch)."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    @property
    def batches_per_epoch(self) -> int:
        return len(self.images) // (self.world_size * self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.images))
        return torch.randperm(len(self.images), generator=torch.Generator().manual_seed(mix(self.seed, epoch)))

    def epoch(self, epoch: int, skip: int = 0) -> "_Epoch":
        return _Epoch(self, epoch, skip)


class _Epoch:
    def __init__(self, loader: MemoryLoader, epoch: int, skip: int):
        self.loader, self.epoch, self.skip = loader, epoch, skip

    def __len__(self) -> int:
        return max(0, self.loader.batches_per_epoch - self.skip)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ld = self.loader
        order = ld._order(self.epoch)
        n = ld.batches_per_epoch * ld.batch_size
        mine = order[ld.rank * n:(ld.rank + 1) * n]
        for b in range(self.skip, ld.batches_per_epoch):
            idx = mine[b * ld.batch_size:(b + 1) * ld.batch_size]
            yield ld.images[idx], idx

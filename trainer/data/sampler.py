"""The row order of training: an infinite stream of row indices, addressed by global sample position,
so the data position is a single integer and a resumed run continues exactly where it stopped."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class RowSampler(Protocol):
    def take(self, start: int, count: int) -> list[int]:
        """Row indices for global sample positions [start, start + count)."""
        ...


class GlobalSampler:
    """Infinite stream of row indices: epoch e is a seeded permutation; position = global index."""

    def __init__(self, num_rows: int, seed: int, shuffle: bool):
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self._cached_epoch = -1
        self._order = np.arange(num_rows)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._cached_epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            self._cached_epoch = epoch
        return self._order

    def take(self, start: int, count: int) -> list[int]:
        """Row indices for global sample positions [start, start + count)."""
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.num_rows)
            out.append(int(self._epoch_order(epoch)[offset]))
        return out

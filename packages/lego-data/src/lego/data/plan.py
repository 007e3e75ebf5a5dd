"""Which items each rank sees in which batch of which epoch: the loaders' order, as a function.

[`EpochPlan`][lego.data.plan.EpochPlan] answers "which items make batch ``k`` of epoch ``e``
on rank ``r``?" directly, without building the epoch's order, so a resumed loader jumps to
any position in O(batch size) work and memory.

The order of one epoch:

1. Positions ``0..n-1`` are mapped to items by a
   [`FeistelPermutation`][lego.data.permutation.FeistelPermutation] keyed by
   ``(seed, epoch)`` when ``shuffle`` is on, else by the identity. Every rank computes the
   same global order.
2. Ranks take positions round-robin: rank ``r`` owns positions ``r, r + W, r + 2W, ...``
   (``W = world_size``), so the ranks partition the epoch.
3. Each rank cuts its positions into batches of ``batch_size``. Every rank gets the same
   number of batches (DDP would hang otherwise):

   - ``drop_last=True``: each rank gets ``n // (W * batch_size)`` full batches; the last
     ``n % (W * batch_size)`` positions of the epoch are skipped (a different tail every
     epoch when shuffling).
   - ``drop_last=False``: every position is used; when ``n`` is not a multiple of ``W`` the
     order is padded by wrapping around to its start, so at most ``W - 1`` items appear
     twice in the epoch (as PyTorch's ``DistributedSampler`` does). Each rank's last batch
     may be smaller than ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lego.data.permutation import FeistelPermutation, derive_key
from lego.protocols import ConfigError, DataError

__all__ = ["EpochPlan"]


@dataclass(frozen=True)
class EpochPlan:
    """The batch layout of every epoch for one rank.

    Attributes:
        num_items: Items in the dataset (windows, examples).
        batch_size: Items per batch on this rank.
        shuffle: Whether the order is a seeded permutation (else ``0..n-1``).
        seed: The shuffle seed; the epoch number is mixed into it.
        drop_last: Skip the incomplete last global batch (see the module docstring).
        rank: This process's rank, in ``range(world_size)``.
        world_size: How many ranks share the data.

    Raises:
        ConfigError: On a non-positive size or a rank outside ``range(world_size)``.
        DataError: When the dataset is too small to give every rank one batch.
    """

    num_items: int
    batch_size: int
    shuffle: bool = True
    seed: int = 0
    drop_last: bool = True
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be at least 1, got {self.batch_size}", key="batch_size"
            )
        if self.world_size < 1:
            raise ConfigError(
                f"world_size must be at least 1, got {self.world_size}", key="world_size"
            )
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"rank must be in [0, {self.world_size}), got {self.rank}",
                key="rank",
                hint="pass the rank torch.distributed gives this process",
            )
        if self.num_items < 1:
            raise DataError("the dataset is empty: there is nothing to batch")
        if self.num_batches == 0:
            raise DataError(
                f"{self.num_items} items cannot fill one batch of {self.batch_size} on each "
                f"of {self.world_size} rank(s) with drop_last=True",
                key="batch_size",
                hint="use a smaller batch_size, fewer ranks, more data or drop_last=False",
            )

    @property
    def per_rank(self) -> int:
        """Positions each rank takes per epoch (before cutting into batches)."""
        if self.drop_last:
            return self.num_batches * self.batch_size
        return -(-self.num_items // self.world_size)

    @property
    def num_batches(self) -> int:
        """Batches per epoch on every rank (the same on all ranks)."""
        if self.drop_last:
            return self.num_items // (self.world_size * self.batch_size)
        per_rank = -(-self.num_items // self.world_size)
        return -(-per_rank // self.batch_size)

    def permutation(self, epoch: int) -> FeistelPermutation | None:
        """The epoch's order (None when not shuffling: the identity).

        Args:
            epoch: The epoch number (0-based).

        Returns:
            The permutation of ``range(num_items)`` keyed by ``(seed, epoch)``, or None.
        """
        if not self.shuffle:
            return None
        return FeistelPermutation(self.num_items, key=derive_key(self.seed, epoch))

    def batch(
        self, epoch: int, index: int, *, permutation: FeistelPermutation | None = None
    ) -> npt.NDArray[np.int64]:
        """Return the items of batch ``index`` of ``epoch`` on this rank.

        Args:
            epoch: The epoch number (0-based).
            index: The batch number in the epoch, in ``range(num_batches)``.
            permutation: ``self.permutation(epoch)``, when the caller keeps it between
                batches (it is rebuilt otherwise).

        Returns:
            Item indices, shape ``(b,)`` with ``b == batch_size`` except possibly for the
            last batch when ``drop_last`` is False; dtype int64.

        Raises:
            IndexError: When ``index`` is outside ``range(num_batches)``.
        """
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} is outside range({self.num_batches})")
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.per_rank)
        positions = self.rank + self.world_size * np.arange(start, stop, dtype=np.int64)
        positions %= self.num_items  # wrap-around padding (drop_last=False only)
        perm = permutation if permutation is not None else self.permutation(epoch)
        return positions if perm is None else perm(positions)

    def iter_batches(
        self, epoch: int, start: int = 0, *, block: int = 1 << 16
    ) -> Iterator[npt.NDArray[np.int64]]:
        """Yield batches ``start, start + 1, ...`` of ``epoch``, as ``batch()`` would.

        The permutation is evaluated for about ``block`` positions at a time (a few hundred
        kilobytes), which amortizes its cost over many batches.

        Args:
            epoch: The epoch number (0-based).
            start: The first batch, in ``range(num_batches + 1)``.
            block: Positions evaluated at once.

        Yields:
            Item indices of each batch, dtype int64.
        """
        size = self.batch_size
        per_block = max(1, block // size)
        perm = self.permutation(epoch)
        for first in range(start, self.num_batches, per_block):
            last = min(first + per_block, self.num_batches)
            lo, hi = first * size, min(last * size, self.per_rank)
            positions = self.rank + self.world_size * np.arange(lo, hi, dtype=np.int64)
            positions %= self.num_items
            items = positions if perm is None else perm(positions)
            for offset in range(0, hi - lo, size):
                yield items[offset : offset + size]

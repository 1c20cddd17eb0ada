"""Per-node minibatches, reshuffled every epoch and exactly resumable.

The order of epoch ``e`` on node ``rank`` is a permutation of the node's shard drawn from a
:class:`torch.Generator` seeded with ``(seed, rank, e)``; batch ``b``'s augmentation uses a
generator seeded with ``(seed, rank, e, b)``. Nothing depends on what was iterated before,
so a run resumed at (epoch, batch) sees the same data as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .base import Augment, DataError, check_pair, generator

#: extra seed key separating the augmentation streams from the shuffling stream
_AUGMENT_STREAM = 1


class NodeLoader:
    """Minibatches of one node's shard for one epoch at a time.

    Parameters
    ----------
    x, y
        The full training set (``float32`` features, ``int64`` labels), shared by all nodes.
    indices
        This node's shard, e.g. ``partition(y, n, scheme, seed)[rank]``.
    batch_size
        Examples per minibatch.
    seed, rank
        Key the shuffling (and augmentation) streams together with the epoch.
    augment
        Optional ``(batch, generator) -> batch`` applied to every training batch.
    drop_last
        Drop the final incomplete batch.
    max_batches
        Cap on batches per epoch, normally :func:`~choco.data.partition.steps_per_epoch`
        so that all ranks take the same number of gossip steps.

    Iterating the loader yields epoch :attr:`epoch` and then advances it by one; use
    :meth:`set_epoch` (or :meth:`batches`) to choose the epoch explicitly, e.g. on resume.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        indices: np.ndarray | torch.Tensor | Sequence[int],
        batch_size: int,
        seed: int,
        rank: int,
        augment: Augment | None = None,
        drop_last: bool = False,
        max_batches: int | None = None,
    ) -> None:
        check_pair(x, y, "NodeLoader")
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        if idx.numel() == 0:
            raise DataError(f"rank {rank} has an empty shard; use fewer nodes or another scheme")
        if int(idx.min()) < 0 or int(idx.max()) >= len(y):
            raise DataError(
                f"indices must lie in [0, {len(y)}), got [{int(idx.min())}, {int(idx.max())}]"
            )
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and idx.numel() < batch_size:
            raise DataError(
                f"rank {rank}: shard of {idx.numel()} examples < batch_size {batch_size} with "
                "drop_last=True gives no batch; lower batch_size or set drop_last=False"
            )
        if max_batches is not None and max_batches < 1:
            raise DataError(f"max_batches must be >= 1 or None, got {max_batches}")
        self.x, self.y, self.indices = x, y, idx
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.augment, self.drop_last, self.max_batches = augment, drop_last, max_batches
        #: the epoch the next ``iter(loader)`` yields
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch (after the ``max_batches`` cap)."""
        k = self.indices.numel()
        full = k // self.batch_size if self.drop_last else -(-k // self.batch_size)
        return full if self.max_batches is None else min(full, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` yield ``epoch``."""
        if epoch < 0:
            raise DataError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The shard's example indices in the order of ``epoch``."""
        perm = torch.randperm(
            self.indices.numel(), generator=generator(self.seed, self.rank, epoch)
        )
        return self.indices[perm]

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` minibatches ``start, start+1, …, len(self)-1`` of ``epoch``."""
        if epoch < 0 or not 0 <= start <= len(self):
            raise DataError(f"need epoch >= 0 and start in [0, {len(self)}], got {epoch}, {start}")
        order = self.order(epoch)
        for b in range(start, len(self)):
            sel = order[b * self.batch_size : (b + 1) * self.batch_size]
            xb, yb = self.x[sel], self.y[sel]
            if self.augment is not None:
                xb = self.augment(xb, generator(self.seed, self.rank, epoch, b, _AUGMENT_STREAM))
            yield xb, yb

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def __repr__(self) -> str:
        return (
            f"NodeLoader(rank={self.rank}, examples={self.indices.numel()}, "
            f"batch_size={self.batch_size}, batches={len(self)}, epoch={self.epoch})"
        )

"""CHOCO-Gossip of every node of a fixed graph at once, in one thread, bit for bit.

:class:`BatchedChocoGossip` holds every node's ``x``, ``x̂`` and ``s`` as rows of ``(n, d)``
arrays and runs the round of :class:`choco.gossip.ChocoGossip` (Alg. 1 of
arXiv:1907.09356, CHOCO-Gossip of arXiv:1902.00340) on all rows together, with a batched
codec (:func:`choco.compress.batch.batch_codec`)::

    Q_i   = Q(x_i − x̂_i)                                 # line 4, every row
    x̂_i  += Q_i                                          # line 7
    s_i  += w_ii Q_i;  s_i += w_ij_k Q_{j_k}, k = 1..deg_i # in the node's neighbour order
    x_i  += γ (s_i − x̂_i)                                 # line 8

Each row gets the per-node arithmetic in the per-node order: elementwise numpy operations
(one IEEE operation per element, so the same bits on a row of a matrix as on a vector), the
codec's per-row scale, the neighbour sums slot by slot (slot ``k`` adds every node's
``k``-th neighbour, in the node's neighbour order), and ``x += γ (s − x̂)`` with the same
torch call per row. So ``x``, ``x̂`` and ``s`` are bit-identical to the per-node objects
driven in lock-step or in threads, without ``n`` messages framed, copied and parsed per
round. Bytes sent are counted as the per-node round counts them: message length ×
neighbours, per round. The round runs over blocks of rows (:data:`BLOCK_ELEMENTS`): every
block's messages first, then every block's update, so each pass over a block reads data
still in the cache; the per-row arithmetic does not depend on the blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .compress.batch import BatchCodec
from .errors import GossipError
from .gossip import check_gamma
from .neighbourhood import round_seed

__all__ = ["BLOCK_ELEMENTS", "BatchedChocoGossip"]

#: elements per block of rows (32,768: 256 KiB per fp64 array, so a block's x, x̂, s, the
#: difference and the slot's words stay in a core's L2 cache)
BLOCK_ELEMENTS = 1 << 15


class BatchedChocoGossip:
    """CHOCO-Gossip on all ``n`` nodes of a fixed graph (rows of ``x``), one round a call.

    Parameters
    ----------
    W
        The ``n × n`` mixing matrix; row ``i``'s off-diagonal support must be
        ``neighbors[i]``.
    neighbors
        Every node's neighbour list, in the order its per-node round adds them.
    codec
        The batched codec (:func:`choco.compress.batch.batch_codec`).
    gamma
        Consensus step size ``γ ∈ (0, 1]``.
    x
        ``(n, d)`` contiguous tensor, row ``i`` = node ``i``'s vector; updated in place.
    seed
        Base seed of the compressor, as :class:`~choco.gossip.ChocoGossip`'s: round ``t``
        of node ``i`` uses ``round_seed(seed, i, t)`` (codecs with random supports).
    """

    def __init__(self, W: np.ndarray, neighbors: Sequence[Sequence[int]], codec: BatchCodec,
                 gamma: float, x: torch.Tensor, seed: int = 0) -> None:
        n = len(neighbors)
        if x.dim() != 2 or x.shape[0] != n or not x.is_contiguous():
            raise GossipError(f"x must be a contiguous (n, d) tensor with n = {n} rows, got "
                              f"shape {tuple(x.shape)}; stack the nodes' vectors.")
        W = np.asarray(W, dtype=np.float64)
        if W.shape != (n, n):
            raise GossipError(f"W must be the {n} x {n} mixing matrix of the {n} nodes, got "
                              f"shape {W.shape}; pass the topology's W.")
        for i, nb in enumerate(neighbors):
            support = [j for j in np.flatnonzero(W[i]).tolist() if j != i]
            if support != list(nb):
                raise GossipError(f"node {i}: mixing row support {support} differs from its "
                                  f"neighbours {list(nb)}; build both from one topology.")
        self.gamma = check_gamma(gamma)
        self.seed = int(seed)
        self.codec = codec
        self.x = x
        self.x_hat = torch.zeros_like(x)
        self.s = torch.zeros_like(x)
        self._diff = torch.empty_like(x)
        self._messages = codec.messages(n)
        # row views for the per-row torch calls: x_i += γ (s_i − x̂_i), the codec's scale
        self._x_rows, self._diff_rows = list(x), list(self._diff)
        self.w_self = np.diagonal(W).copy()
        self.degree = np.array([len(nb) for nb in neighbors], dtype=np.int64)
        d = max(1, x.shape[1])
        size = max(1, min(n, BLOCK_ELEMENTS // d))
        #: row blocks, and per block and slot k: (rows of the block that have a k-th
        #: neighbour, None: all; those neighbours; w_ij)
        self.blocks = [slice(a, min(n, a + size)) for a in range(0, n, size)]
        self.slots: list[list[tuple[np.ndarray | None, np.ndarray, np.ndarray]]] = []
        for block in self.blocks:
            per_slot = []
            for k in range(int(self.degree[block].max(initial=0))):
                rows = np.array([i for i in range(block.start, block.stop)
                                 if len(neighbors[i]) > k], dtype=np.intp)
                senders = np.array([neighbors[i][k] for i in rows], dtype=np.intp)
                local = None if len(rows) == block.stop - block.start else rows - block.start
                per_slot.append((local, senders, W[rows, senders]))
            self.slots.append(per_slot)
        self._ones = np.ones(n)
        self.step_count = 0

    @property
    def bytes_sent(self) -> np.ndarray:
        """Payload bytes each node put on the wire: message length × neighbours × rounds."""
        return self.degree * self.codec.message_nbytes * self.step_count

    def step(self) -> None:
        """One round on every node (Alg. 1 lines 4–8, in the per-node order), block by
        block of rows: every block's messages first (a node's neighbours may be in any
        block), then every block's update."""
        x, x_hat, s = self.x.numpy(), self.x_hat.numpy(), self.s.numpy()
        diff, codec, messages = self._diff.numpy(), self.codec, self._messages
        seeds = ([round_seed(self.seed, i, self.step_count) for i in range(len(self.degree))]
                 if codec.seeded else None)  # the seeds ChocoGossip.begin would use
        for b in self.blocks:  # begin: Q(x − x̂) (the difference as torch.sub: one IEEE op)
            np.subtract(x[b], x_hat[b], out=diff[b])
            codec.encode_(self._diff_rows[b], diff[b], messages, b.start,
                          None if seeds is None else seeds[b])
        for b, slots in zip(self.blocks, self.slots, strict=True):  # finish
            codec.add_(messages, x_hat[b], self._ones[b], b)  # x̂ += Q_i
            codec.add_(messages, s[b], self.w_self[b], b)  # s += w_ii Q_i
            for rows, senders, weights in slots:  # s += w_ij Q_j, neighbour by neighbour
                codec.add_(messages, s[b], weights, senders, rows)
            np.subtract(s[b], x_hat[b], out=diff[b])
            for xi, di in zip(self._x_rows[b], self._diff_rows[b], strict=True):
                xi.add_(di, alpha=self.gamma)  # the per-node torch call on each row
        self.step_count += 1

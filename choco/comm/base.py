"""The communicator interface shared by the in-process and the MPI backends.

A communicator knows its rank, the network size and its neighbours in the gossip graph
(symmetric: in- and out-neighbours are the same sorted list). Its one hot-path operation is
a *non-blocking neighbourhood exchange* of equal-size byte buffers: every node sends one
buffer to all its neighbours and receives one from each (``MPI_Ineighbor_allgather`` on a
distributed-graph communicator). Small blocking collectives serve metrics and set-up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import CommError


class Exchange(ABC):
    """A posted neighbourhood exchange; :meth:`wait` returns one buffer per neighbour."""

    @abstractmethod
    def wait(self) -> list[torch.Tensor]:
        """Block until done; buffers are in :attr:`Communicator.neighbors` order."""


class Communicator(ABC):
    """Rank, size, neighbours, one non-blocking neighbourhood exchange, small collectives."""

    rank: int
    size: int
    neighbors: list[int]

    @abstractmethod
    def neighbor_exchange(self, send: torch.Tensor) -> Exchange:
        """Post ``send`` (1-D CPU ``uint8``) to every neighbour and receive theirs.

        All neighbours must send buffers of the same length. The returned buffers are valid
        until the next exchange is posted (they may live in buffers allocated once).
        """

    @abstractmethod
    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over all ranks (a new array); blocking."""

    @abstractmethod
    def allgather(self, array: np.ndarray) -> np.ndarray:
        """Stack every rank's equal-shape ``array`` along a new axis 0, in rank order."""

    @abstractmethod
    def allgather_object(self, obj: object) -> list:
        """Every rank's (picklable, small) ``obj``, in rank order; never on the hot path."""

    def barrier(self) -> None:
        """Wait for every rank."""
        self.allreduce(np.zeros(1))

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` on every rank (same shape and dtype everywhere)."""
        return self.allgather(array)[root].copy()


def rank_order_sum(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``parts[0] + parts[1] + ...`` added in rank order (a new array).

    Every backend reduces through this function, so a sum is bit-identical whichever
    launcher ran the job (MPI's own reduction order depends on the implementation).
    """
    out = np.array(parts[0], copy=True)
    for p in parts[1:]:
        out += p
    return out


def check_neighbors(rank: int, size: int, neighbors: Sequence[int]) -> list[int]:
    """Validate a neighbour list: sorted unique ranks in ``[0, size)`` without ``rank``."""
    out = sorted(int(j) for j in neighbors)
    if len(set(out)) != len(out) or any(j == rank or not 0 <= j < size for j in out):
        raise CommError(
            f"rank {rank}: neighbours must be distinct ranks in [0, {size}) other than "
            f"{rank}, got {list(neighbors)}; build them from the topology's graph."
        )
    return out

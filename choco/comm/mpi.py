"""The MPI backend: a distributed-graph communicator over mpi4py.

``MPI_Dist_graph_create_adjacent`` gives every rank its neighbourhood; the gossip exchange is
one ``MPI_Ineighbor_allgather`` of equal-size byte buffers (no pickling), received into a
buffer allocated once and reused while the message size stays the same. Importing this
module imports ``mpi4py.MPI`` (and so initialises MPI); the package never does that at import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mpi4py import MPI

from .base import CommError, Communicator, Exchange, check_neighbors, rank_order_sum


class _MPIExchange(Exchange):
    def __init__(self, request: MPI.Request | None, send: np.ndarray, recv: np.ndarray) -> None:
        self.request = request
        self.send = send  # kept alive until the request completes
        self.recv = recv

    def wait(self) -> list[torch.Tensor]:
        if self.request is not None:
            self.request.Wait()
            self.request = None
        return [torch.from_numpy(row) for row in self.recv]


class MPICommunicator(Communicator):
    """Rank ``comm.rank`` of ``comm`` with the given neighbours (symmetric graph).

    Parameters
    ----------
    neighbors
        Sorted ranks this rank exchanges with; must be symmetric across ranks.
    comm
        The parent communicator, ``MPI.COMM_WORLD`` by default.
    """

    def __init__(self, neighbors: Sequence[int], comm: MPI.Comm | None = None) -> None:
        self.world = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        self.neighbors = check_neighbors(self.rank, self.size, neighbors)
        self.graph = self.world.Create_dist_graph_adjacent(
            self.neighbors, self.neighbors, reorder=False
        )
        self._recv = np.empty((len(self.neighbors), 0), dtype=np.uint8)

    @classmethod
    def from_matrix(cls, W: np.ndarray, comm: MPI.Comm | None = None) -> MPICommunicator:
        world = comm if comm is not None else MPI.COMM_WORLD
        rank = world.Get_rank()
        return cls([j for j in range(W.shape[0]) if j != rank and W[rank, j] != 0], world)

    def neighbor_exchange(self, send: torch.Tensor) -> Exchange:
        buf = send.numpy()
        if self._recv.shape[1] != buf.size:
            self._recv = np.empty((len(self.neighbors), buf.size), dtype=np.uint8)
        if not self.neighbors:
            return _MPIExchange(None, buf, self._recv)
        request = self.graph.Ineighbor_allgather([buf, MPI.BYTE], [self._recv, MPI.BYTE])
        return _MPIExchange(request, buf, self._recv)

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Sum over ranks, added in rank order (:func:`rank_order_sum`): bit-identical to the
        in-process backend. It gathers every rank's array (memory ``size ×``), which suits
        the metrics and small reductions it serves."""
        return rank_order_sum(self.allgather(array))

    def allgather(self, array: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(array)
        out = np.empty((self.size, *arr.shape), dtype=arr.dtype)
        self.world.Allgather(arr, out)
        return out

    def allgather_object(self, obj: object) -> list:
        return self.world.allgather(obj)

    def barrier(self) -> None:
        self.world.Barrier()

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        arr = np.ascontiguousarray(array).copy()
        self.world.Bcast(arr, root=root)
        return arr

    def check_sizes_agree(self, value: int, what: str) -> None:
        """Raise on every rank (never hang) if ``value`` differs between ranks."""
        values = self.allgather(np.array([value], dtype=np.int64))[:, 0]
        if len(set(values.tolist())) != 1:
            raise CommError(f"{what} differs between ranks: {values.tolist()}")


def world_size() -> int:
    return MPI.COMM_WORLD.Get_size()

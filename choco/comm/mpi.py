"""The MPI backend: a distributed-graph communicator over mpi4py.

``MPI_Dist_graph_create_adjacent`` gives every rank its neighbourhood; the gossip exchange is
one ``MPI_Irecv`` from and one ``MPI_Isend`` to every neighbour on that communicator
(equal-size byte buffers, no pickling), received into a buffer allocated once and reused
while the message size stays the same. Point-to-point rather than one
``MPI_Ineighbor_allgather``, so that each neighbour's message can be waited for (and
decoded) on its own while the next is still arriving
(:meth:`Exchange.wait_each <choco.comm.base.Exchange.wait_each>`). Importing this module
imports ``mpi4py.MPI`` (and so initialises MPI); the package never does that at import.

Nothing here can leave a rank waiting for a peer that will never come:

* the constructor gathers every rank's neighbour list (one world collective) *before* the
  collective graph creation, and raises :class:`CommError` on every rank if a list is
  invalid or not mirrored ("rank 1 lists rank 2 as a neighbour but rank 2 does not list
  rank 1");
* the first exchange gathers every rank's message length (one world collective, once per
  communicator) and raises on every rank if two neighbours differ; later rounds add no
  collective. (Past that check, a longer message fails the receive and a shorter one
  leaves stale bytes; the gossip's decoder then names the sender, see
  :mod:`choco.neighbourhood`.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from mpi4py import MPI

from .abort import abort_wanted, install_abort_hook
from .base import (
    SAME_LENGTH_FIX,
    CommError,
    Exchange,
    ProcessCommunicator,
    format_ranks,
)
from .peers import MPIPeerExchange, check_sends


def _world_place() -> tuple[int, int]:
    """``(rank, size)`` in ``MPI.COMM_WORLD``; size 1 once MPI is finalized (nothing to end)."""
    if MPI.Is_finalized():
        return 0, 1
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


#: the MPI tag of the neighbourhood exchange's messages (a peer exchange uses ``PEER_TAG``)
NEIGHBOUR_TAG = 23


class _MPIExchange(Exchange):
    """One ``Irecv`` from and one ``Isend`` to every neighbour on the graph communicator;
    MPI's non-overtaking rule (same source, tag and communicator) pairs the rounds in
    order."""

    def __init__(self, graph: MPI.Intracomm | None, send: np.ndarray, recv: np.ndarray,
                 owner: MPICommunicator) -> None:
        self.send = send  # kept alive until the requests complete
        self.recv = recv
        self.owner = owner
        peers = owner.neighbors if graph is not None else []
        self.recvs = [graph.Irecv([recv[k], MPI.BYTE], source=j, tag=NEIGHBOUR_TAG)
                      for k, j in enumerate(peers)] if graph is not None else []
        self.sends = [graph.Isend([send, MPI.BYTE], dest=j, tag=NEIGHBOUR_TAG)
                      for j in peers] if graph is not None else []

    def progress(self) -> None:
        """``MPI_Testall`` on the requests: MPICH advances non-blocking transfers only
        inside MPI calls (no progress thread by default), so without this the messages
        posted before the computation would wait for :meth:`wait` to move."""
        if self.recvs or self.sends:
            MPI.Request.Testall(self.recvs + self.sends)  # completes them at most

    def wait_each(self) -> Iterator[torch.Tensor]:
        """Neighbour ``k``'s buffer once its ``Irecv`` is complete; the sends are waited
        for after the last. Before handing a buffer over (to be decoded) the other
        transfers are advanced once (:meth:`progress`), so that a message sent with
        MPI's rendezvous protocol is cleared to move while the receiver decodes."""
        try:
            for k, request in enumerate(self.recvs):
                request.Wait()
                if k + 1 < len(self.recvs):
                    self.progress()
                yield torch.from_numpy(self.recv[k])
            MPI.Request.Waitall(self.sends)
        except MPI.Exception as exc:  # e.g. MPI_ERR_TRUNCATE under Open MPI
            owner = self.owner
            raise CommError(
                f"rank {owner.rank}: the gossip exchange with "
                f"{format_ranks(owner.neighbors)} failed ({exc.Get_error_string()}); "
                f"a neighbour probably sent a message of another length: {SAME_LENGTH_FIX}."
            ) from exc

    def wait(self) -> list[torch.Tensor]:
        return list(self.wait_each())


class MPICommunicator(ProcessCommunicator):
    """Rank ``comm.rank`` of ``comm`` with the given neighbours (symmetric graph).

    Construction is collective over ``comm``: every rank must build its communicator at the
    same point. It first gathers every rank's neighbour list and raises :class:`CommError`
    on every rank if one is invalid or the relation is not symmetric, then creates the
    distributed graph. An empty list is allowed on every rank: ``MPICommunicator([], world)``
    is a communicator for the blocking collectives only (e.g. the start-up check
    :func:`choco.comm.check_agreement`, run before the topology is known); it never
    exchanges with neighbours.

    Parameters
    ----------
    neighbors
        Ranks this rank exchanges with; must be symmetric across ranks.
    comm
        The parent communicator, ``MPI.COMM_WORLD`` by default.
    abort_on_error
        End the whole job (``MPI_Abort``) when an exception escapes on this rank, after its
        traceback, as ``python -m mpi4py`` does (see :mod:`choco.comm.abort`). ``None``
        (the default) means yes unless the environment sets ``CHOCO_NO_ABORT=1``.

    Attributes
    ----------
    all_neighbors
        Every rank's (sorted) neighbour list, in rank order, as gathered at construction.
    """

    def __init__(self, neighbors: Sequence[int], comm: MPI.Intracomm | None = None, *,
                 abort_on_error: bool | None = None) -> None:
        if abort_wanted(abort_on_error):
            install_abort_hook(_world_place, MPI.COMM_WORLD.Abort, "MPI_Abort")
        self.world = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        self.neighbors = self._agree_on_neighbors(neighbors, self.world.allgather)
        self.graph = self.world.Create_dist_graph_adjacent(
            self.neighbors, self.neighbors, reorder=False
        )
        self._recv = np.empty((len(self.neighbors), 0), dtype=np.uint8)
        self._lengths_checked = False

    @classmethod
    def from_matrix(cls, W: np.ndarray, comm: MPI.Intracomm | None = None) -> MPICommunicator:
        world = comm if comm is not None else MPI.COMM_WORLD
        rank = world.Get_rank()
        return cls([j for j in range(W.shape[0]) if j != rank and W[rank, j] != 0], world)

    def neighbor_exchange(self, send: torch.Tensor) -> Exchange:
        """Post ``send`` to every neighbour (collective over the graph: every rank posts).

        The first exchange also gathers every rank's message length (one world collective)
        and raises :class:`CommError` on every rank if two neighbours differ.
        """
        buf = send.numpy()
        if not self._lengths_checked:
            self._check_lengths(buf.size)
        if self._recv.shape[1] != buf.size:
            self._recv = np.empty((len(self.neighbors), buf.size), dtype=np.uint8)
        return _MPIExchange(self.graph if self.neighbors else None, buf, self._recv, self)

    def peer_exchange(self, sends: Mapping[int, torch.Tensor], nbytes: int) -> Exchange:
        """This round's peers only: ``Isend``/``Irecv`` on the graph communicator
        (:mod:`choco.comm.peers`); the first call checks the lengths, like
        :meth:`neighbor_exchange`."""
        peers = check_sends(self.rank, self.neighbors, sends, nbytes)
        if not self._lengths_checked:
            self._check_lengths(nbytes)
        if self._recv.shape[1] != nbytes:
            self._recv = np.empty((len(self.neighbors), nbytes), dtype=np.uint8)
        return MPIPeerExchange(self.graph, peers, sends, self._recv, self.rank)

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

    def close(self) -> None:
        """Free the graph communicator (collective: every rank of the world)."""
        self.graph.Free()

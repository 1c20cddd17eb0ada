"""Exchanges with one round's peers only (time-varying graphs), shared by the backends.

On a time-varying graph (docs/algorithms.md, "Time-varying graphs") the communicator is built
on the *union* graph, and round ``t`` exchanges only with that round's peers, a subset of the
neighbours, sending a possibly different message to each (one public copy per edge).
:meth:`Communicator.peer_exchange(sends, nbytes) <choco.comm.base.Communicator.peer_exchange>`
posts ``sends[j]`` to every peer ``j`` and receives one ``nbytes``-byte message from each;
every rank calls it once per round, with no peers when it idles. Only real messages travel:

* MPI: point-to-point ``Isend``/``Irecv`` on the distributed-graph communicator (tag
  :data:`PEER_TAG`), completed together;
* torch.distributed: one ``batch_isend_irecv`` with the round's peers (none: no call);
* in-process: per-(sender, receiver, round) mailbox entries.

This module holds what they share: the checks of a round's ``sends`` and the MPI exchange
(written against the request interface of mpi4py, without importing ``mpi4py.MPI``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import CommError, Exchange

__all__ = ["PEER_TAG", "MPIPeerExchange", "check_sends"]

#: the MPI tag of the messages of a peer exchange
PEER_TAG = 24


def check_sends(rank: int, neighbors: Sequence[int], sends: Mapping[int, torch.Tensor],
                nbytes: int) -> list[int]:
    """The round's peers (the keys of ``sends``, in their order), checked: neighbours of
    ``rank`` (the union graph's), distinct, each message a 1-D ``uint8`` buffer of
    ``nbytes`` bytes.

    Raises
    ------
    CommError
        Naming the first peer or message that does not fit.
    """
    peers = [int(j) for j in sends]
    allowed = set(neighbors)
    bad = [j for j in peers if j not in allowed]
    if bad:
        raise CommError(f"rank {rank}: round peer {bad[0]} is not a neighbour ({list(neighbors)})"
                        "; build the communicator on the schedule's union graph.")
    for j, buf in sends.items():
        if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() != nbytes:
            raise CommError(f"rank {rank}: the message to rank {j} must be a 1-D uint8 buffer "
                            f"of {nbytes} bytes, got dtype {buf.dtype} shape "
                            f"{tuple(buf.shape)}; every message of a round has the same length.")
    return peers


class MPIPeerExchange(Exchange):
    """``Irecv`` from and ``Isend`` to each peer on ``comm`` (an mpi4py intracommunicator);
    :meth:`wait` completes all and returns the received rows in peer order."""

    def __init__(self, comm, peers: list[int], sends: Mapping[int, torch.Tensor],
                 recv: np.ndarray, owner_rank: int) -> None:
        self.rank = owner_rank
        self.peers = peers
        self.recv = recv
        self.send = [sends[j].numpy() for j in peers]  # kept alive until completion
        self.requests = [comm.Irecv(recv[k], source=j, tag=PEER_TAG)
                         for k, j in enumerate(peers)]
        self.requests += [comm.Isend(buf, dest=j, tag=PEER_TAG)
                          for j, buf in zip(peers, self.send, strict=True)]

    def progress(self) -> None:
        """``MPI_Test`` on each pending request (MPICH progresses only inside MPI calls)."""
        for request in self.requests:
            request.Test()

    def wait(self) -> list[torch.Tensor]:
        requests, self.requests = self.requests, []
        try:
            for request in requests:
                request.Wait()
        except Exception as exc:  # mpi4py's MPI.Exception, e.g. MPI_ERR_TRUNCATE
            raise CommError(f"rank {self.rank}: the exchange with round peers {self.peers} "
                            f"failed ({exc}); every rank must run the same compressor on a "
                            "model of the same size.") from exc
        return [torch.from_numpy(self.recv[k]) for k in range(len(self.peers))]


class DoneExchange(Exchange):
    """An exchange that is already complete (no peers, or in-process buffers)."""

    def __init__(self, received: list[torch.Tensor]) -> None:
        self.received = received

    def wait(self) -> list[torch.Tensor]:
        return self.received

"""A deterministic in-process network of ``n`` nodes running the same per-node code.

Two ways to drive it:

* **Lock-step, one thread** (tests, the consensus CLI): call ``begin`` on every node, then
  ``finish`` on every node. An exchange whose neighbour has not posted yet raises instead
  of blocking, so it can never deadlock.
* **One thread per node** (:meth:`LocalNetwork.run`): blocking collectives work because
  the threads meet at a barrier; a node that raises breaks the barrier, so the others stop
  too, and the first error is re-raised in the caller.

Collectives combine contributions in rank order, so results do not depend on thread timing.
The neighbour lists must be symmetric (checked at construction, naming the offending pairs),
and a message whose length differs from the receiver's own raises :class:`CommError` naming
the sender, as the MPI backend does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from .base import (
    SAME_LENGTH_FIX,
    CommError,
    Communicator,
    Exchange,
    check_neighbors,
    check_symmetric,
    rank_order_sum,
)
from .peers import check_sends

T = TypeVar("T")
R = TypeVar("R")


class LocalNetwork:
    """``n`` nodes with the given neighbour lists, exchanging through shared mailboxes."""

    def __init__(self, neighbors: Sequence[Sequence[int]], timeout: float = 600.0) -> None:
        self.size = len(neighbors)
        self.neighbors = [check_neighbors(i, self.size, nb) for i, nb in enumerate(neighbors)]
        check_symmetric(self.neighbors)
        self.timeout = timeout
        self._cond = threading.Condition()
        # (sender, round) -> [buffer, receivers that have not collected it yet]
        # a peer exchange's entries are keyed (sender, receiver, round), with count 1
        self._mail: dict[tuple[int, ...], list] = {}
        self._barrier = threading.Barrier(self.size)
        self._slots: list[object] = [None] * self.size
        self.threaded = False
        self.comms = [LocalCommunicator(self, i) for i in range(self.size)]

    @classmethod
    def from_matrix(cls, W: np.ndarray) -> LocalNetwork:
        """Neighbours from the off-diagonal support of a mixing matrix."""
        n = W.shape[0]
        return cls([[j for j in range(n) if j != i and W[i, j] != 0] for i in range(n)])

    def run(self, fn: Callable[[LocalCommunicator], T]) -> list[T]:
        """Run ``fn(comm)`` for every node, one thread each; return results in rank order."""
        results: dict[int, T] = {}  # rank -> fn's value
        errors: list[BaseException | None] = [None] * self.size

        def target(i: int) -> None:
            try:
                results[i] = fn(self.comms[i])
            except BaseException as exc:  # re-raised in the caller below
                errors[i] = exc
                self._barrier.abort()
                with self._cond:
                    self._cond.notify_all()

        if self._barrier.broken:  # a previous run failed
            self._barrier.reset()
        self.threaded = True
        threads = [
            threading.Thread(target=target, args=(i,), daemon=True) for i in range(self.size)
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            self.threaded = False
        first = next((e for e in errors if e is not None and not _secondary(e)), None)
        first = first or next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [results[i] for i in range(self.size)]

    # -- mailbox --------------------------------------------------------------------------
    def _post(self, sender: int, rnd: int, buf: torch.Tensor) -> None:
        with self._cond:
            if self.neighbors[sender]:
                self._mail[(sender, rnd)] = [buf, len(self.neighbors[sender])]
            self._cond.notify_all()

    def _post_to(self, sender: int, rnd: int, sends: dict[int, torch.Tensor]) -> None:
        """One round of a peer exchange: a mailbox entry per (sender, receiver, round)."""
        with self._cond:
            for j, buf in sends.items():
                self._mail[(sender, j, rnd)] = [buf, 1]
            self._cond.notify_all()

    def _collect(self, receiver: int, rnd: int,
                 keys: list[tuple[int, ...]] | None = None) -> list[torch.Tensor]:
        if keys is None:
            keys = [(j, rnd) for j in self.neighbors[receiver]]
        with self._cond:
            missing = [k for k in keys if k not in self._mail]
            if missing and not self.threaded:
                raise CommError(
                    f"node {receiver}: neighbour {missing[0][0]} has not posted exchange "
                    f"{rnd}; in lock-step use call begin on every node before finish."
                )
            ok = self._cond.wait_for(
                lambda: self._barrier.broken or all(k in self._mail for k in keys),
                timeout=self.timeout,
            )
            if self._barrier.broken:
                raise _PeerFailed(f"node {receiver}: another node failed")
            if not ok:
                raise CommError(f"node {receiver}: exchange {rnd} timed out")
            out = []
            for k in keys:
                entry = self._mail[k]
                out.append(entry[0])
                entry[1] -= 1
                if entry[1] == 0:
                    del self._mail[k]
            return out

    def _collective(self, rank: int, value: object, combine: Callable[[list[Any]], R]) -> R:
        if self.size == 1:
            return combine([value])
        if not self.threaded:
            raise CommError(
                "blocking collectives on a LocalNetwork need one thread per node: run the "
                "per-node code through LocalNetwork.run(fn)."
            )
        try:
            self._slots[rank] = value
            self._barrier.wait(self.timeout)
            result = combine(list(self._slots))
            self._barrier.wait(self.timeout)
        except threading.BrokenBarrierError:
            raise _PeerFailed(f"node {rank}: another node failed") from None
        return result


class _PeerFailed(CommError):
    """Raised in nodes whose peer failed; the peer's own error is the one reported."""


def _secondary(exc: BaseException) -> bool:
    return isinstance(exc, _PeerFailed)


class _LocalExchange(Exchange):
    def __init__(self, net: LocalNetwork, rank: int, rnd: int, length: int,
                 keys: list[tuple[int, ...]] | None = None) -> None:
        self.net, self.rank, self.rnd, self.length = net, rank, rnd, length
        self.keys = keys  # a peer exchange's (sender, receiver, round) entries

    def wait(self) -> list[torch.Tensor]:
        received = self.net._collect(self.rank, self.rnd, self.keys)
        senders = (self.net.neighbors[self.rank] if self.keys is None
                   else [k[0] for k in self.keys])
        for j, buf in zip(senders, received, strict=True):
            if buf.numel() != self.length:  # MPI would truncate or leave stale bytes
                raise CommError(
                    f"rank {j} sent a {buf.numel()}-byte gossip message to rank {self.rank}, "
                    f"which sends {self.length}-byte messages; {SAME_LENGTH_FIX}."
                )
        return received


class LocalCommunicator(Communicator):
    """Node ``rank`` of a :class:`LocalNetwork`."""

    def __init__(self, net: LocalNetwork, rank: int) -> None:
        self.net = net
        self.rank = rank
        self.size = net.size
        self.neighbors = net.neighbors[rank]
        self._round = 0

    def neighbor_exchange(self, send: torch.Tensor) -> Exchange:
        rnd = self._round
        self._round += 1
        # Receivers must see the bytes as sent, even if the sender reuses its buffer.
        self.net._post(self.rank, rnd, send.clone())
        return _LocalExchange(self.net, self.rank, rnd, send.numel())

    def peer_exchange(self, sends: Mapping[int, torch.Tensor], nbytes: int) -> Exchange:
        """This round's peers only (:mod:`choco.comm.peers`); copies what it posts."""
        peers = check_sends(self.rank, self.neighbors, sends, nbytes)
        rnd = self._round
        self._round += 1
        self.net._post_to(self.rank, rnd, {j: sends[j].clone() for j in peers})
        return _LocalExchange(self.net, self.rank, rnd, nbytes,
                              [(j, self.rank, rnd) for j in peers])

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        return self.net._collective(self.rank, np.asarray(array), rank_order_sum)

    def allgather_object(self, obj: object) -> list:
        return self.net._collective(self.rank, obj, list)

    def allgather(self, array: np.ndarray) -> np.ndarray:
        return self.net._collective(self.rank, np.asarray(array), np.stack)

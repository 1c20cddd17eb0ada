"""One node's neighbourhood round: mixing weights and one non-blocking exchange in flight.

Every gossip algorithm (CHOCO-Gossip in :mod:`choco.gossip`, the baselines in
:mod:`choco.baselines`) *holds* a :class:`NeighbourRound`: it encodes its message, calls
:meth:`NeighbourRound.post`, and later either :meth:`NeighbourRound.wait` returns its own
message and one buffer per neighbour, in the communicator's neighbour order, or
:meth:`NeighbourRound.arrivals` hands the neighbours' buffers over one at a time, in the same
order, each as soon as it has arrived (CHOCO-Gossip decodes one while the next is still on
the wire). The round also counts the payload bytes put on the wire, the time spent waiting
(:attr:`NeighbourRound.waited`), and checkpoints an exchange that is in flight, so a resumed
run posts the same message again (docs/algorithms.md, "Orders").

Message integrity: before a message is decoded, :meth:`NeighbourRound.check_one` (every
message at once: :meth:`NeighbourRound.check_received`) checks its header (magic, codec,
element count) and length against the receiver's compressor and vector size, and
:meth:`NeighbourRound.decode_add_` decodes one neighbour's message; either raises
:class:`~choco.errors.GossipError` naming the sending rank ("message from rank 3 to rank 1
does not decode: ...") instead of mis-decoding.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .comm.base import Communicator, Exchange
from .compress.base import Compressor, header_of
from .errors import CompressionError, GossipError

__all__ = ["NeighbourRound", "RoundState", "neighbour_weights", "round_seed", "undecodable"]

#: the fix named by every error about a neighbour's message
SAME_SETUP_FIX = "every rank must run the same compressor and model"


def undecodable(sender: int, receiver: int, exc: Exception) -> GossipError:
    """The error for a message from ``sender`` that ``receiver`` cannot decode (``exc``)."""
    what = str(exc).split("; ")[0].rstrip(".")  # the finding, without the codec's advice
    return GossipError(
        f"message from rank {sender} to rank {receiver} does not decode: {what}; "
        f"{SAME_SETUP_FIX}."
    )


@contextmanager
def naming_sender(sender: int, receiver: int) -> Iterator[None]:
    """Turn a :class:`CompressionError` raised inside into :func:`undecodable`."""
    try:
        yield
    except CompressionError as exc:
        raise undecodable(sender, receiver, exc) from exc


def check_message(sender: int, receiver: int, buf: torch.Tensor, compressor: Compressor,
                  numel: int) -> None:
    """Check ``sender``'s message header against ``receiver``'s ``compressor`` and its
    ``numel`` elements; a mismatch raises :func:`undecodable`, naming the sender."""
    with naming_sender(sender, receiver):
        _, n, _ = header_of(compressor, buf)
        if n != numel:
            raise CompressionError(f"{compressor.spec}: the message holds {n} elements but "
                                   f"rank {receiver} gossips {numel}")


def neighbour_weights(comm: Communicator, W_row) -> tuple[float, list[float]]:
    """``(w_ii, [w_ij for j in comm.neighbors])`` from row ``comm.rank`` of ``W``.

    Raises
    ------
    GossipError
        If the row has the wrong length or its off-diagonal support is not the
        communicator's neighbour list.
    """
    row = np.asarray(W_row, dtype=np.float64).reshape(-1)
    if row.shape[0] != comm.size:
        raise GossipError(
            f"the mixing row has {row.shape[0]} entries but the network has {comm.size} "
            "nodes; use row `rank` of the topology's n x n matrix."
        )
    support = [j for j in range(comm.size) if j != comm.rank and row[j] != 0]
    if support != list(comm.neighbors):
        raise GossipError(
            f"node {comm.rank}: mixing row support {support} differs from the "
            f"communicator's neighbours {comm.neighbors}; build both from one topology."
        )
    return float(row[comm.rank]), [float(row[j]) for j in comm.neighbors]


def round_seed(seed: int, rank: int, step: int) -> int:
    """The compressor seed of round ``step`` on ``rank``: independent streams per (rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])


@dataclass
class RoundState:
    """What a checkpoint keeps of a round: bytes sent so far and the message in flight."""

    bytes_sent: int = 0
    pending_message: torch.Tensor | None = None

    def to_dict(self) -> dict:
        sd: dict = {"bytes_sent": self.bytes_sent}
        if self.pending_message is not None:
            sd["pending_message"] = self.pending_message.clone()
        return sd

    @classmethod
    def from_dict(cls, sd: dict) -> RoundState:
        return cls(int(sd.get("bytes_sent", 0)), sd.get("pending_message"))


class NeighbourRound:
    """One node's neighbourhood and its non-blocking exchange (at most one in flight).

    Parameters
    ----------
    comm
        This node's communicator; ``comm.neighbors`` must be the support of ``W_row``.
    W_row
        Row ``comm.rank`` of the mixing matrix.

    Attributes
    ----------
    w_self, w_neighbors
        ``w_ii`` and ``[w_ij for j in comm.neighbors]``.
    bytes_sent
        Payload bytes this node put on the wire (message length × neighbours), cumulative.
    """

    def __init__(self, comm: Communicator, W_row) -> None:
        self.comm = comm
        self.w_self, self.w_neighbors = neighbour_weights(comm, W_row)
        self.bytes_sent = 0
        #: seconds this node was blocked waiting in the last exchange (:meth:`wait`, or
        #: the iteration of :meth:`arrivals`); what a benchmark subtracts to get CPU time
        self.waited = 0.0
        self._pending: tuple[torch.Tensor, Exchange] | None = None

    @property
    def in_flight(self) -> bool:
        """Whether a message was posted and not yet waited for."""
        return self._pending is not None

    def post(self, message: torch.Tensor) -> None:
        """Send ``message`` (a flat uint8 buffer) to every neighbour, without blocking."""
        if self._pending is not None:
            raise GossipError("begin called twice: call finish(x) before the next begin(x)")
        self._pending = (message, self.comm.neighbor_exchange(message))
        self.bytes_sent += message.numel() * len(self.comm.neighbors)

    def progress(self) -> None:
        """Advance the exchange in flight, if any, without blocking (cheap: one
        ``MPI_Test`` under MPI, nothing elsewhere)."""
        if self._pending is not None:
            self._pending[1].progress()

    def _take(self) -> tuple[torch.Tensor, Exchange]:
        if self._pending is None:
            raise GossipError("finish called without begin: call begin(x) first")
        pending, self._pending = self._pending, None
        return pending

    def wait(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Block until the exchange is done: ``(own message, [neighbour buffers])``."""
        message, exchange = self._take()
        start = time.perf_counter()
        received = exchange.wait()
        self.waited = time.perf_counter() - start
        return message, received

    def arrivals(self) -> tuple[torch.Tensor, Iterator[tuple[int, torch.Tensor]]]:
        """``(own message, iterator of (sender, buffer))``: the neighbours' messages in
        neighbour order, each as soon as it has arrived while later ones may still be in
        flight (:meth:`Exchange.wait_each <choco.comm.base.Exchange.wait_each>`). Iterate
        it to the end: the exchange (own sends included) is complete only then."""
        message, exchange = self._take()
        return message, self._timed(exchange.wait_each())

    def _timed(self, buffers: Iterator[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
        """``buffers`` paired with their senders; the time spent blocked in it goes to
        :attr:`waited`."""
        self.waited = 0.0
        senders = iter(self.comm.neighbors)
        while True:
            start = time.perf_counter()
            buf = next(buffers, None)
            self.waited += time.perf_counter() - start
            if buf is None:
                return
            yield next(senders), buf

    def check_received(self, received: list[torch.Tensor], compressor: Compressor,
                       numel: int) -> None:
        """Check every neighbour's message (header, codec, length, element count) against
        ``compressor`` and a ``numel``-element vector, before any state is updated.

        Raises
        ------
        GossipError
            Naming the sender of the first message that does not fit.
        """
        for sender, buf in zip(self.comm.neighbors, received, strict=True):
            self.check_one(sender, buf, compressor, numel)

    def check_one(self, sender: int, buf: torch.Tensor, compressor: Compressor,
                  numel: int) -> None:
        """:meth:`check_received` for one message, from ``sender``."""
        check_message(sender, self.comm.rank, buf, compressor, numel)

    def decode_add_(self, compressor: Compressor, sender: int, buf: torch.Tensor,
                    out: torch.Tensor, alpha: float = 1.0) -> None:
        """``compressor.decode_add_(buf, out, alpha)`` for ``sender``'s message, naming the
        sender if it does not decode."""
        with self.from_rank(sender):
            compressor.decode_add_(buf, out, alpha)

    def from_rank(self, sender: int) -> AbstractContextManager[None]:
        """Turn a :class:`CompressionError` raised inside into :func:`undecodable`."""
        return naming_sender(sender, self.comm.rank)

    def state(self) -> RoundState:
        """Bytes sent and a copy of the message in flight (``None`` when idle)."""
        message = None if self._pending is None else self._pending[0].clone()
        return RoundState(self.bytes_sent, message)

    def restore(self, state: RoundState) -> None:
        """Restore :meth:`state`; posts a saved in-flight message again (collective)."""
        if self._pending is not None:
            raise GossipError("cannot load a state with an exchange in flight: finish it first")
        self.bytes_sent = state.bytes_sent
        if state.pending_message is not None:
            self.post(state.pending_message)
            self.bytes_sent = state.bytes_sent  # that message was counted before the save

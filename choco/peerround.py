"""One node's exchange with one round's peers on a time-varying graph (one message per edge).

The time-varying averagers of :mod:`choco.timevarying` hold a :class:`PeerRound`, as the static
ones hold a :class:`~choco.neighbourhood.NeighbourRound`: they encode one message per peer of
the round, :meth:`PeerRound.post` sends each to its peer only
(:meth:`~choco.comm.base.Communicator.peer_exchange`), and :meth:`PeerRound.wait` returns the
sent messages and the received ones, by peer. The round counts the bytes of the messages sent
and checkpoints those in flight, so a resumed run posts them again. Received messages are
checked (header, codec, element count) before anything is decoded; errors name the sender.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch

from .comm.base import Communicator, Exchange
from .compress.base import Compressor
from .errors import GossipError
from .neighbourhood import check_message, naming_sender

__all__ = ["PeerRound", "edge_seed"]


def edge_seed(seed: int, rank: int, t: int, peer: int) -> int:
    """The compressor seed of the message ``rank → peer`` in round ``t``: independent streams
    per (rank, round, peer)."""
    return int(np.random.SeedSequence([seed, rank, t, peer]).generate_state(1, np.uint64)[0])


class PeerRound:
    """One node's exchange with a round's peers (at most one in flight)."""

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm
        #: payload bytes put on the wire so far (every message sent, to its one peer)
        self.bytes_sent = 0
        self._pending: tuple[dict[int, torch.Tensor], int, Exchange] | None = None

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def post(self, sends: dict[int, torch.Tensor], nbytes: int) -> None:
        """Send ``sends[j]`` to each peer ``j`` (none: this node idles), without blocking;
        every message of the round, sent or received, has ``nbytes`` bytes."""
        if self._pending is not None:
            raise GossipError("begin called twice: call finish(x) before the next begin(x)")
        self._pending = (sends, nbytes, self.comm.peer_exchange(sends, nbytes))
        self.bytes_sent += sum(m.numel() for m in sends.values())

    def progress(self) -> None:
        if self._pending is not None:
            self._pending[2].progress()

    def wait(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Block until done: ``(messages sent, messages received)``, both by peer."""
        if self._pending is None:
            raise GossipError("finish called without begin: call begin(x) first")
        (sends, _, exchange), self._pending = self._pending, None
        return sends, dict(zip(sends, exchange.wait(), strict=True))

    def check_received(self, received: dict[int, torch.Tensor], compressor: Compressor,
                       numel: int) -> None:
        """Check every received header against ``compressor`` and ``numel`` elements."""
        for sender, buf in received.items():
            check_message(sender, self.comm.rank, buf, compressor, numel)

    def from_rank(self, sender: int) -> AbstractContextManager[None]:
        """Turn a :class:`CompressionError` raised inside into one naming ``sender``."""
        return naming_sender(sender, self.comm.rank)

    def state(self) -> dict:
        """Bytes sent, and copies of the messages in flight (with their length)."""
        sd: dict = {"bytes_sent": self.bytes_sent}
        if self._pending is not None:
            sends, nbytes, _ = self._pending
            sd["pending_messages"] = {j: m.clone() for j, m in sends.items()}
            sd["pending_nbytes"] = nbytes
        return sd

    def restore(self, sd: dict) -> None:
        """Restore :meth:`state`; posts saved in-flight messages again (collective)."""
        if self._pending is not None:
            raise GossipError("cannot load a state with an exchange in flight: finish it first")
        if "pending_messages" in sd:
            self.post({int(j): m for j, m in sd["pending_messages"].items()},
                      int(sd["pending_nbytes"]))
        self.bytes_sent = int(sd.get("bytes_sent", 0))

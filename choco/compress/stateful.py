"""Codecs with per-node coding state: the optional protocol and its drivers.

A :class:`~choco.compress.base.Compressor` is a pure function of its input and the seed it
is given. A codec whose messages also depend on something each node learns or keeps (today
``lgc``: autoencoder weights, optimizer state, counters, a one-time switch) declares it by
also deriving from :class:`Stateful`:

* :meth:`Stateful.new_state` makes the per-node :class:`CodingState` (the same on every
  node at the start);
* :meth:`Stateful.encode_payload_with` and :meth:`Stateful.decode_payload_add_with` code a
  payload *given* that state, without changing it.

The state object is created, owned and checkpointed by whoever drives the node (the gossip
round, :class:`choco.gossip.ChocoGossip`, and the one-thread drivers ``prepare_round`` and
``lockstep``), never by the codec. After each message it sends, the driver lets the state
learn and count (:meth:`CodingState.observe`); when :meth:`CodingState.sync_due`, every node
runs the sync (:func:`sync` over a communicator, :func:`sync_in_process` for nodes driven
from one thread): node 0's :meth:`CodingState.share` reaches every node, which adopts it,
and the nodes check that they agree on a digest of what they now hold.

:func:`bind` couples a codec with one node's state into an ordinary
:class:`~choco.compress.base.Compressor` (sizes and ``δ`` from the codec, payloads through
the state), so the message layer, the framing checks and the per-sender error reporting
are the same for every codec.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from typing_extensions import TypeIs

from ..errors import AgreementError
from .base import CompressionError, Compressor, Reserved, message_nbytes

if TYPE_CHECKING:
    from .layout import Layout

__all__ = [
    "Bound",
    "CodingState",
    "Collective",
    "Stateful",
    "bind",
    "check_agreement",
    "digest",
    "is_stateful",
    "prepare_alone",
    "state_of",
    "sync",
    "sync_in_process",
]


class Collective(Protocol):
    """What :func:`sync` needs of a :class:`~choco.comm.Communicator`."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray: ...

    def allgather_object(self, obj: object) -> list: ...


def _no_sync(state: object, method: str) -> CompressionError:
    """The error for a coding state asked to sync that never declared a sync step."""
    return CompressionError(
        f"{type(state).__name__}.{method}() was called, but this coding state has no sync "
        "step: a state whose sync_due() can return True must override share() and adopt()"
    )


class CodingState(ABC):
    """One node's coding state of a :class:`Stateful` codec, owned by the gossip round.

    Subclasses implement :meth:`observe` (learning and counting after a message was sent)
    and the checkpoint pair; a state that must agree across the nodes at some round also
    implements :meth:`sync_due`, :meth:`share` and :meth:`adopt`.
    """

    #: bytes this node sent outside its messages (node 0's broadcast at a sync)
    sync_bytes: int = 0

    @abstractmethod
    def observe(self, x: torch.Tensor, flags: int) -> None:
        """Learn from, and count, the message this node just sent for ``x`` (header
        ``flags``); the only place where the state changes between syncs."""

    def sync_due(self) -> bool:
        """Whether every node must run the sync before its next message (default: never)."""
        return False

    def share(self) -> np.ndarray:
        """What node 0 sends every node at the sync; also what the nodes' digests cover."""
        raise _no_sync(self, "share")

    def adopt(self, shared: np.ndarray, rank: int, size: int) -> None:
        """Take node 0's :meth:`share` (this node is ``rank`` of ``size``): the sync step."""
        raise _no_sync(self, "adopt")

    def fit_alone(self, x: torch.Tensor) -> None:
        """Get ready to code ``x`` with no network (one node): default, nothing to do."""
        return None

    def counters(self) -> dict[str, int]:
        """Per-node counts the run reports, summed over the nodes (default: none)."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything a resumed run needs (saved with the gossip state)."""

    @abstractmethod
    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`."""


class Stateful(ABC):
    """The optional protocol of a codec with per-node coding state (mixed into a
    :class:`~choco.compress.base.Compressor`)."""

    @abstractmethod
    def new_state(self) -> CodingState:
        """A fresh per-node state, the same on every node."""

    @abstractmethod
    def encode_payload_with(
        self, state: CodingState, x: torch.Tensor, seed: int
    ) -> tuple[int, torch.Tensor | Reserved]:
        """:meth:`~choco.compress.base.Compressor.encode_payload` given ``state``, which it
        reads and never changes."""

    @abstractmethod
    def decode_payload_add_with(
        self, state: CodingState, payload: torch.Tensor, flags: int, seed: int,
        out: torch.Tensor, alpha: float,
    ) -> None:
        """:meth:`~choco.compress.base.Compressor.decode_payload_add_` given ``state``."""


def is_stateful(codec: object) -> TypeIs[Stateful]:
    """Whether ``codec`` keeps per-node coding state (the one capability check)."""
    return isinstance(codec, Stateful)


class Bound(Compressor):
    """A :class:`Stateful` codec coupled with one node's :class:`CodingState`: the codec's
    sizes, ``δ`` and header id, with payloads coded through the state."""

    def __init__(self, codec: Compressor, state: CodingState) -> None:
        if not is_stateful(codec):
            raise TypeError(f"bind needs a Stateful codec, got {codec!r}")
        self.codec, self.state, self._stateful = codec, state, codec
        self.codec_id = codec.codec_id
        self.spec, self.unbiased, self._raw = codec.spec, codec.unbiased, codec._raw

    def nbytes(self, numel: int, dtype: torch.dtype = torch.float32) -> int:
        return self.codec.nbytes(numel, dtype)

    def payload_nbytes(self, numel: int) -> int:
        return self.codec.payload_nbytes(numel)

    def _message_nbytes(self, numel: int, flags: int) -> int:
        return message_nbytes(self.codec, numel, flags)

    def delta(self, numel: int) -> float:
        return self.codec.delta(numel)

    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        return self._stateful.encode_payload_with(self.state, x, seed)

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float, layout: Layout | None = None) -> None:
        self._stateful.decode_payload_add_with(self.state, payload, flags, seed, out, alpha)


def bind(codec: Compressor, state: CodingState | None) -> Compressor:
    """What one node codes with: ``codec`` itself when ``state`` is None (stateless), else
    ``codec`` bound to ``state`` (:class:`Bound`)."""
    return codec if state is None else Bound(codec, state)


def state_of(coder: Compressor) -> CodingState | None:
    """The coding state a coder from :func:`bind` or :func:`prepare_alone` codes with."""
    return coder.state if isinstance(coder, Bound) else None


def prepare_alone(codec: Compressor, x: torch.Tensor) -> Compressor:
    """The coder for ``x`` on one node with no network (the compress CLI, the benchmarks):
    ``codec`` when stateless, else ``codec`` bound to a fresh state that got ready on ``x``
    (:meth:`CodingState.fit_alone`; ``lgc``: its warm-up steps on ``x``, then its switch
    with itself)."""
    if not is_stateful(codec):
        return codec
    state = codec.new_state()
    state.fit_alone(x.detach().cpu())
    return Bound(codec, state)


def digest(array: np.ndarray) -> str:
    """SHA-256 of ``array``'s bytes: what the nodes compare after a sync."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def check_agreement(digests: list[str], spec: str) -> None:
    """Raise :class:`AgreementError` naming the ranks whose digest is not node 0's."""
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        name = spec.split(":")[0]
        raise AgreementError(
            f"{name}: after the switch every node must hold node 0's shared coding state "
            f"(its weights), but ranks {differ} hold other weights; the broadcast was "
            "corrupted or ranks run different versions of choco."
        )


def sync(state: CodingState, comm: Collective, spec: str) -> None:
    """The sync as a collective on every node: node 0's :meth:`~CodingState.share`
    broadcast, adopted, then the digests compared across nodes.

    ``comm`` is a :class:`~choco.comm.Communicator` (``broadcast``, ``allgather_object``,
    ``rank``, ``size``); raises :class:`AgreementError` on every rank if any node holds
    something else afterwards.
    """
    shared = comm.broadcast(state.share(), root=0)
    state.adopt(shared, comm.rank, comm.size)
    check_agreement(comm.allgather_object(digest(state.share())), spec)


def sync_in_process(states: list[CodingState], spec: str) -> None:
    """:func:`sync` for the states of all nodes, in rank order, driven from one thread
    (no collective can run there): node 0's share copied to every node."""
    shared = states[0].share().copy()
    for rank, state in enumerate(states):
        state.adopt(shared, rank, len(states))
    check_agreement([digest(s.share()) for s in states], spec)

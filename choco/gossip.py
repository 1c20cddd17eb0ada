"""CHOCO-Gossip on one node, in the memory-efficient form, split into ``begin``/``finish``.

Algorithm 1 of arXiv:1907.09356 (CHOCO-SGD; CHOCO-Gossip is arXiv:1902.00340, Alg. 1), node
``i`` with neighbours ``N_i`` and mixing weights ``w_ij``; state ``x_hat_i`` (own public copy)
and ``s_i = Σ_{j ∈ N_i ∪ {i}} w_ij x_hat_j``, both zero at the start::

    begin:   q_i = Q(x_i - x_hat_i)                    # line 4: compress the difference
             post q_i to every neighbour              # line 5: one neighbourhood exchange
    finish:  s_i     += w_ii q_i                       # memory-efficient form of line 7:
             for j ∈ N_i, in order: wait for q_j; s_i += w_ij q_j   # decode as they arrive
             x_hat_i += q_i                            # line 7 (with the *decoded* q_i)
             x_i     += γ (s_i - x_hat_i)              # line 8: consensus step

Rows of ``W`` sum to one, so ``s_i - x_hat_i = Σ_j w_ij (x_hat_j - x_hat_i)``. Splitting the
round lets the exchange overlap computation: the training loop calls ``finish`` after its next
local step (see :mod:`choco.optim`). ``x`` is one flat tensor updated in place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .comm.base import Communicator
from .compress.base import Compressor
from .compress.stateful import CodingState, bind, is_stateful, sync, sync_in_process
from .errors import GossipError
from .neighbourhood import NeighbourRound, RoundState, neighbour_weights, round_seed
from .peerround import PeerRound
from .wire.framing import parse_header

__all__ = [
    "ChocoGossip",
    "GossipError",
    "GossipState",
    "check_gamma",
    "lockstep",
    "neighbour_weights",
    "round_seed",
]

log = logging.getLogger(__name__)


def check_gamma(gamma: float | str, what: str = "gamma") -> float:
    """Return ``gamma`` as a float if ``0 < gamma <= 1``, else raise :class:`GossipError`.

    CHOCO's consensus step ``x += γ (s − x̂)`` is a damped move toward the neighbours'
    public copies; γ ∈ (0, 1] (arXiv:1907.09356, Alg. 1 line 8). One check, one wording, for
    the library and every command-line program.
    """
    try:
        value = float(gamma)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise GossipError(
            f"{what} must be a number in (0, 1], got {gamma!r}; CHOCO's consensus step is a "
            "damped average (try 1 for identity, 0.5 for sign, 0.05 for topk:0.01, or 'auto' "
            "where the tuner is available)."
        )
    return value


@dataclass
class GossipState:
    """Everything a resumed run needs to continue bit for bit."""

    #: public copy ``x_hat_i`` (mirrored by every neighbour), same shape as ``x``
    x_hat: torch.Tensor
    #: ``s_i = Σ_j w_ij x_hat_j`` over ``N_i ∪ {i}``
    s: torch.Tensor
    #: completed rounds; keys the compressor's randomness with the base seed and rank
    step: int = 0


class _ExchangeViews:
    """Read-only views of a held round (``NeighbourRound`` or ``PeerRound``): its
    communicator, whether an exchange is in flight, the bytes sent, and progress."""

    round: NeighbourRound | PeerRound
    #: whether ``begin`` and ``finish`` must run back to back (no overlap with computation)
    synchronous: ClassVar[bool] = False

    @property
    def comm(self) -> Communicator:
        return self.round.comm

    @property
    def in_flight(self) -> bool:
        """Whether ``begin`` was called without its ``finish``."""
        return self.round.in_flight

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this node put on the wire so far (one message per neighbour, or per
        active edge of the round, each time)."""
        return self.round.bytes_sent

    def progress(self) -> None:
        """Advance the exchange in flight without blocking; call it during computation
        (:meth:`choco.optim.ChocoSGD.progress_hooks` does, from the backward pass)."""
        self.round.progress()


class _HoldsRound(_ExchangeViews):
    """The views of :class:`_ExchangeViews` plus the fixed weights of a static graph."""

    round: NeighbourRound

    @property
    def w_self(self) -> float:
        return self.round.w_self

    @property
    def w_neighbors(self) -> list[float]:
        return self.round.w_neighbors


def prepare_round(gossips: Sequence) -> None:
    """What a round needs before the nodes' ``begin`` calls when one thread drives every
    node: the sync of a codec with coding state (``lgc``'s switch, a collective in
    :meth:`ChocoGossip.begin`, which would wait forever for the other nodes' ``begin``) is
    done here, in this thread, over the nodes' states in rank order."""
    nodes = [g for g in gossips if isinstance(g, ChocoGossip) and g.coding is not None]
    states = [g.coding for g in nodes if g.coding is not None]
    if states and states[0].sync_due():
        sync_in_process(states, nodes[0].compressor.spec)


def lockstep(gossips: Sequence, xs: Sequence[torch.Tensor], rounds: int = 1) -> None:
    """Drive the nodes of a :class:`~choco.comm.LocalNetwork` through ``rounds`` rounds.

    Calls ``begin`` on every node, then ``finish`` on every node, per round, in one thread
    (deterministic). Used by the γ tuner and the tests.
    """
    for _ in range(rounds):
        prepare_round(gossips)
        for g, x in zip(gossips, xs, strict=True):
            g.begin(x)
        for g, x in zip(gossips, xs, strict=True):
            g.finish(x)


class ChocoGossip(_HoldsRound):
    """CHOCO-Gossip state and round for one node (Alg. 1, arXiv:1907.09356).

    Parameters
    ----------
    comm
        This node's communicator; ``comm.neighbors`` must be the support of ``W_row``.
    W_row
        Row ``comm.rank`` of the mixing matrix (length ``comm.size``).
    compressor
        The operator ``Q``; δ-contractive (see :mod:`choco.compress.base`). A codec with
        per-node coding state (:mod:`choco.compress.stateful`, ``lgc``) gets its state here,
        in :attr:`coding`: made, driven (learning after each message, the sync when due)
        and checkpointed by this round.
    gamma
        Consensus step size ``γ ∈ (0, 1]``.
    seed
        Base seed; round ``t`` on rank ``r`` uses ``round_seed(seed, r, t)``.
    """

    def __init__(
        self,
        comm: Communicator,
        W_row: np.ndarray,
        compressor: Compressor,
        gamma: float,
        seed: int = 0,
    ) -> None:
        self.gamma = check_gamma(gamma)
        self.round = NeighbourRound(comm, W_row)
        self.compressor = compressor
        #: this node's coding state (lgc: weights, counters, the switch); None if stateless
        self.coding: CodingState | None = (compressor.new_state() if is_stateful(compressor)
                                           else None)
        self._coder = bind(compressor, self.coding)  # the codec, or it coupled to the state
        self.seed = int(seed)
        self.state: GossipState | None = None
        self._diff: torch.Tensor | None = None  # s − x̂, a buffer reused across rounds

    # ------------------------------------------------------------------ state
    def init_state(self, x: torch.Tensor, x_hat: torch.Tensor | None = None) -> GossipState:
        """Zero ``x_hat`` and ``s`` (the paper's start), or start from a shared ``x_hat``.

        A non-zero start is valid only if every node passes its own ``x_hat`` and ``s`` is
        consistent; here ``x_hat`` given means all nodes start at the same value, so
        ``s = x_hat`` (rows of ``W`` sum to one).
        """
        zero = torch.zeros_like(x)
        if x_hat is None:
            self.state = GossipState(x_hat=zero, s=zero.clone())
        else:
            self.state = GossipState(x_hat=x_hat.clone(), s=x_hat.clone())
        return self.state

    def init(self, x: torch.Tensor) -> None:
        """Zero ``x_hat`` and ``s`` for a vector shaped like ``x`` (paper and authors' code)."""
        self.init_state(x)

    # ------------------------------------------------------------------ one round
    def begin(self, x: torch.Tensor) -> None:
        """Compress ``x - x_hat`` and post it to every neighbour (Alg. 1 lines 4–5)."""
        if self.in_flight:
            raise GossipError("begin called twice: call finish(x) before the next begin(x)")
        state = self.state if self.state is not None else self.init_state(x)
        if x.shape != state.x_hat.shape:
            raise GossipError(
                f"x has shape {tuple(x.shape)} but the gossip state has "
                f"{tuple(state.x_hat.shape)}; gossip one flat buffer of fixed size."
            )
        seed = round_seed(self.seed, self.comm.rank, state.step)
        coding = self.coding
        if coding is not None and coding.sync_due():
            sync(coding, self.comm, self.compressor.spec)  # lgc's switch: a collective, once
        diff = self._buffer(state.x_hat)
        torch.sub(x, state.x_hat, out=diff)  # x − x̂ into the round's buffer, no allocation
        message = self._coder.encode(diff, seed)
        if coding is not None:  # the state learns from, and counts, what was sent
            coding.observe(diff, parse_header(message, self.compressor.spec).flags)
        self.round.post(message)

    def finish(self, x: torch.Tensor) -> None:
        """Wait, decode, update ``x_hat`` and ``s``, then ``x += γ (s - x_hat)`` (lines 6–8).

        Neighbour ``j``'s message is decoded into ``s`` as soon as it has arrived, while the
        later ones are still in flight, but always in neighbour order (wait for the first,
        decode it, wait for the second, ...): ``s += w_ii q_i + Σ_j w_ij q_j`` is summed in
        the same order whatever the arrival order, so results are bit-identical to waiting
        for the whole exchange first.

        Raises :class:`GossipError` naming the sender if a neighbour's message does not
        decode with this node's compressor (checked before that message is decoded; ``x``,
        ``x_hat`` and the step are not changed then, ``s`` holds the messages before it —
        the run cannot go on).
        """
        if self.state is None:
            raise GossipError("finish called without begin: call begin(x) first")
        message, arrivals = self.round.arrivals()
        state, numel, weights = self.state, x.numel(), self.w_neighbors
        x_hat, s = state.x_hat.view(-1), state.s.view(-1)
        # the own message is added straight into s and x̂ (a sparse one only on its support,
        # never through a dense temporary), each neighbour's into s in one pass
        self._coder.decode_add_(message, s, alpha=self.w_self)
        for k, (j, buf) in enumerate(arrivals):
            self.round.check_one(j, buf, self._coder, numel)
            self.round.decode_add_(self._coder, j, buf, s, alpha=weights[k])
        self._coder.decode_add_(message, x_hat)
        diff = self._buffer(state.s)
        torch.sub(state.s, state.x_hat, out=diff)
        x.add_(diff, alpha=self.gamma)
        state.step += 1

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this node put on the wire: messages, plus for ``lgc`` on node 0
        the one broadcast of the autoencoder at the switch."""
        return self.round.bytes_sent + (self.coding.sync_bytes if self.coding else 0)

    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        """The round's scratch vector (``x − x̂``, then ``s − x̂``), allocated once."""
        if self._diff is None or self._diff.shape != like.shape or self._diff.dtype != like.dtype:
            self._diff = torch.empty_like(like)
        return self._diff

    def step(self, x: torch.Tensor) -> None:
        """One whole round: ``begin`` then ``finish``."""
        self.begin(x)
        self.finish(x)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """``x_hat``, ``s``, step and bytes, plus the message of an exchange in flight.

        In the default training order an exchange is always in flight between steps; its
        (deterministic) message is saved so that :meth:`load_state_dict` can post it again.
        """
        if self.state is None:
            return {}
        st = self.state
        sd = {"x_hat": st.x_hat.clone(), "s": st.s.clone(), "step": st.step,
              **self.round.state().to_dict()}
        if self.coding is not None:
            sd["compressor"] = self.coding.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`; re-posts a saved in-flight exchange (collective)."""
        if not sd:
            if self.in_flight:
                raise GossipError("cannot load a state with an exchange in flight")
            self.state = None
            return
        if "compressor" in sd:
            if self.coding is None:
                raise GossipError(
                    f"the saved gossip state holds coding state, but {self.compressor.spec} "
                    "keeps none; resume with the --compressor the run was started with."
                )
            self.coding.load_state_dict(sd["compressor"])
        self.round.restore(RoundState.from_dict(sd))
        self.state = GossipState(x_hat=sd["x_hat"].clone(), s=sd["s"].clone(),
                                 step=int(sd["step"]))

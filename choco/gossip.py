"""CHOCO-Gossip on one node, in the memory-efficient form, split into ``begin``/``finish``.

Algorithm 1 of arXiv:1907.09356 (CHOCO-SGD; CHOCO-Gossip is arXiv:1902.00340, Alg. 1), node
``i`` with neighbours ``N_i`` and mixing weights ``w_ij``; state ``x_hat_i`` (own public copy)
and ``s_i = Σ_{j ∈ N_i ∪ {i}} w_ij x_hat_j``, both zero at the start::

    begin:   q_i = Q(x_i - x_hat_i)                    # line 4: compress the difference
             post q_i to every neighbour              # line 5: one neighbourhood exchange
    finish:  wait for q_j, j ∈ N_i
             x_hat_i += q_i                            # line 7 (with the *decoded* q_i)
             s_i     += w_ii q_i + Σ_j w_ij q_j        # memory-efficient form of line 7
             x_i     += γ (s_i - x_hat_i)              # line 8: consensus step

Rows of ``W`` sum to one, so ``s_i - x_hat_i = Σ_j w_ij (x_hat_j - x_hat_i)``. Splitting the
round lets the exchange overlap computation: the training loop calls ``finish`` after its next
local step (see :mod:`choco.optim`). ``x`` is one flat tensor updated in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .comm.base import Communicator, Exchange
from .compress.base import Compressor

log = logging.getLogger(__name__)


class GossipError(ValueError):
    """Bad gossip configuration or call order (requirement, value received, fix)."""


@dataclass
class GossipState:
    """Everything a resumed run needs to continue bit for bit."""

    #: public copy ``x_hat_i`` (mirrored by every neighbour), same shape as ``x``
    x_hat: torch.Tensor
    #: ``s_i = Σ_j w_ij x_hat_j`` over ``N_i ∪ {i}``
    s: torch.Tensor
    #: completed rounds; keys the compressor's randomness with the base seed and rank
    step: int = 0


def neighbour_weights(comm: Communicator, W_row) -> tuple[float, list[float]]:
    """``(w_ii, [w_ij for j in comm.neighbors])`` from row ``comm.rank`` of ``W``.

    Raises if the row's off-diagonal support is not the communicator's neighbour list.
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


class NeighbourRound:
    """One node's neighbourhood and its non-blocking exchange, shared by every gossip.

    Holds the mixing weights in the communicator's neighbour order, the exchange in flight
    (at most one), and the payload bytes posted so far. An in-flight message is part of the
    checkpoint: :meth:`_restore_exchange` posts it again on resume (collective).
    """

    def __init__(self, comm: Communicator, W_row) -> None:
        self.comm = comm
        self.w_self, self.w_neighbors = neighbour_weights(comm, W_row)
        #: payload bytes this node put on the wire (message length × neighbours), cumulative
        self.bytes_sent = 0
        self._pending: tuple[torch.Tensor, Exchange] | None = None

    @property
    def in_flight(self) -> bool:
        """Whether ``begin`` was called without its ``finish``."""
        return self._pending is not None

    def _post(self, message: torch.Tensor) -> None:
        if self._pending is not None:
            raise GossipError("begin called twice: call finish(x) before the next begin(x)")
        self._pending = (message, self.comm.neighbor_exchange(message))
        self.bytes_sent += message.numel() * len(self.comm.neighbors)

    def _wait(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self._pending is None:
            raise GossipError("finish called without begin: call begin(x) first")
        (message, exchange), self._pending = self._pending, None
        return message, exchange.wait()

    def _exchange_state(self) -> dict:
        sd: dict = {"bytes_sent": self.bytes_sent}
        if self._pending is not None:
            sd["pending_message"] = self._pending[0].clone()
        return sd

    def _restore_exchange(self, sd: dict) -> None:
        if self._pending is not None:
            raise GossipError("cannot load a state with an exchange in flight: finish it first")
        self.bytes_sent = int(sd.get("bytes_sent", 0))
        message = sd.get("pending_message")
        if message is not None:
            self._post(message)
            self.bytes_sent -= message.numel() * len(self.comm.neighbors)  # counted already


class ChocoGossip(NeighbourRound):
    """CHOCO-Gossip state and round for one node (Alg. 1, arXiv:1907.09356).

    Parameters
    ----------
    comm
        This node's communicator; ``comm.neighbors`` must be the support of ``W_row``.
    W_row
        Row ``comm.rank`` of the mixing matrix (length ``comm.size``).
    compressor
        The operator ``Q``; δ-contractive (see :mod:`choco.compress.base`).
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
        if not 0.0 < gamma <= 1.0:
            raise GossipError(
                f"gamma must be in (0, 1], got {gamma}; CHOCO's consensus step is a convex "
                "combination (try 0.5 for sign, 0.05 for top-1%)."
            )
        super().__init__(comm, W_row)
        self.compressor = compressor
        self.gamma = float(gamma)
        self.seed = int(seed)
        self.state: GossipState | None = None

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
        self._post(self.compressor.encode(x - state.x_hat, seed))

    def finish(self, x: torch.Tensor) -> None:
        """Wait, decode, update ``x_hat`` and ``s``, then ``x += γ (s - x_hat)`` (lines 6–8)."""
        if self.state is None:
            raise GossipError("finish called without begin: call begin(x) first")
        message, received = self._wait()
        state = self.state
        q = self.compressor.decode(message, x.dtype, x.device).view_as(x)
        state.x_hat.add_(q)
        state.s.add_(q, alpha=self.w_self)
        for w, buf in zip(self.w_neighbors, received, strict=True):
            self.compressor.decode_add_(buf, state.s.view(-1), alpha=w)
        x.add_(state.s - state.x_hat, alpha=self.gamma)
        state.step += 1

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
        return {"x_hat": st.x_hat.clone(), "s": st.s.clone(), "step": st.step,
                **self._exchange_state()}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`; re-posts a saved in-flight exchange (collective)."""
        if not sd:
            if self.in_flight:
                raise GossipError("cannot load a state with an exchange in flight")
            self.state = None
            return
        self._restore_exchange(sd)
        self.state = GossipState(x_hat=sd["x_hat"].clone(), s=sd["s"].clone(),
                                 step=int(sd["step"]))

r"""CHOCO-Gossip and exact gossip on a time-varying graph, and periodic global averaging.

A *schedule* gives round ``t``'s mixing weights (``topologies.Schedule``; the library only
needs :class:`ScheduleLike`). Round ``t`` (counted from 0) of node ``i`` involves its peers
``P_t(i)`` with symmetric weights ``w_ij^t``. CHOCO's memory-efficient state (x̂_i and
s_i = Σ_j w_ij x̂_j) is valid only for one fixed ``W``, so :class:`TimeVaryingChocoGossip`
keeps one public copy per directed edge of the union graph (docs/algorithms.md,
"Time-varying graphs")::

    begin:   q_{i→j} = Q(x_i − x̂_{i→j})                    for j ∈ P_t(i), sent to j only
    finish:  x̂_{i→j} += q_{i→j};  x̂_{j→i} += q_{j→i}       both ends hold both copies
             x_i += γ Σ_{j∈P_t(i)} w_ij^t (x̂_{j→i} − x̂_{i→j})

(arXiv:1907.09356, Alg. 1 lines 4–8, per edge). Memory per node: two model-sized copies per
union-graph neighbour met so far, plus one scratch vector. Symmetric ``W_t`` keeps the
network mean; identity with ``γ = 1`` gives ``x ← W_t x``. :class:`GlobalAverage` adds the
exact average of Gossip-PGA (arXiv:2105.09080) after every ``H``-th round.

:func:`make_choco_gossip` and :func:`make_exact_gossip` pick today's static path
(:class:`~choco.gossip.ChocoGossip`, :class:`~choco.baselines.ExactGossip`) for a graph that
does not change, so fixed graphs give the same bits as before.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch

from .baselines import ExactGossip
from .comm.base import Communicator
from .compress.base import Compressor, decode
from .compress.identity import Identity
from .compress.stateful import is_stateful
from .errors import GossipError
from .gossip import ChocoGossip, _ExchangeViews, check_gamma
from .peerround import PeerRound, edge_seed

__all__ = ["GlobalAverage", "ScheduleLike", "TimeVaryingChocoGossip", "TimeVaryingExact",
           "edge_seed", "make_choco_gossip", "make_exact_gossip", "schedule_residual"]


class ScheduleLike(Protocol):
    """What the gossip needs from a schedule (``topologies.Schedule`` or ``Topology``)."""

    @property
    def n(self) -> int: ...
    @property
    def time_varying(self) -> bool: ...
    @property
    def pga_every(self) -> int | None: ...

    def neighbors(self, i: int) -> list[int]: ...
    def round_weights(self, i: int, t: int) -> dict[int, float]: ...
    def row(self, i: int) -> np.ndarray: ...


class _OnSchedule(_ExchangeViews):
    """Shared by the time-varying averagers: the schedule, the round counter, the peers
    (communicator, in-flight flag, bytes and progress come from :class:`_ExchangeViews`;
    bytes count one message per active edge per round)."""

    round: PeerRound
    schedule: ScheduleLike
    #: the current round t (completed rounds); checkpointed
    t: int

    def weights(self) -> dict[int, float]:
        """``{j: w_ij^t}`` of the current round ``t`` (checked against the comm)."""
        weights = self.schedule.round_weights(self.comm.rank, self.t)
        extra = [j for j in weights if j not in set(self.comm.neighbors)]
        if extra:
            raise GossipError(f"node {self.comm.rank}: round {self.t} pairs it with rank "
                              f"{extra[0]}, not a neighbour of its communicator "
                              f"({self.comm.neighbors}); build the communicator on the "
                              "schedule's union graph (schedule.neighbors(rank)).")
        return weights


class TimeVaryingChocoGossip(_OnSchedule):
    """CHOCO-Gossip for one node on a schedule, one public copy per directed edge.

    Parameters
    ----------
    comm
        This node's communicator, built on the schedule's union graph.
    schedule
        Gives round ``t``'s weights (:class:`ScheduleLike`); all nodes use the same one.
    compressor, gamma, seed
        As for :class:`~choco.gossip.ChocoGossip`; message ``i → j`` of round ``t`` is
        encoded with :func:`~choco.peerround.edge_seed` ``(seed, i, t, j)``.
    """

    def __init__(self, comm: Communicator, schedule: ScheduleLike, compressor: Compressor,
                 gamma: float, seed: int = 0) -> None:
        self.gamma = check_gamma(gamma)
        self.round = PeerRound(comm)
        self.schedule = schedule
        if is_stateful(compressor):
            raise GossipError(f"compressor {compressor.spec} keeps per-node state, which the "
                              "time-varying gossip does not support; use a stateless one "
                              "(sign, topk, randk, qsgd, ...) or a static topology.")
        self.compressor = compressor
        self.seed = int(seed)
        self.t = 0
        #: ``{j: [x̂_{i→j}, x̂_{j→i}]}``, created (zero) when edge {i, j} is first active
        self.copies: dict[int, list[torch.Tensor]] = {}
        self._acc: torch.Tensor | None = None

    def init(self, x: torch.Tensor) -> None:
        """Nothing to do: copies start at zero when their edge is first active."""

    def _pair(self, j: int, x: torch.Tensor) -> list[torch.Tensor]:
        if j not in self.copies:
            self.copies[j] = [torch.zeros_like(x), torch.zeros_like(x)]
        pair = self.copies[j]
        if pair[0].shape != x.shape:
            raise GossipError(f"x has shape {tuple(x.shape)} but the gossip state has "
                              f"{tuple(pair[0].shape)}; gossip one flat buffer of fixed size.")
        return pair

    def begin(self, x: torch.Tensor) -> None:
        """Compress ``x − x̂_{i→j}`` for each peer ``j`` of this round and post them."""
        if self.in_flight:
            raise GossipError("begin called twice: call finish(x) before the next begin(x)")
        weights = self.weights()
        rank = self.comm.rank
        sends = {j: self.compressor.encode(x - self._pair(j, x)[0],
                                           edge_seed(self.seed, rank, self.t, j))
                 for j in weights}
        self.round.post(sends, self.compressor.nbytes(x.numel(), x.dtype))

    def finish(self, x: torch.Tensor) -> None:
        """Wait, update both copies of each active edge, ``x += γ Σ_j w_ij (x̂_{j→i} − x̂_{i→j})``."""
        weights = self.weights()
        sends, received = self.round.wait()
        self.round.check_received(received, self.compressor, x.numel())
        if self._acc is None or self._acc.shape != x.shape or self._acc.dtype != x.dtype:
            self._acc = torch.empty_like(x)
        acc = self._acc.view(-1).zero_()
        for (j, buf), w in zip(received.items(), weights.values(), strict=True):
            mine, theirs = (c.view(-1) for c in self._pair(j, x))
            self.compressor.decode_add_(sends[j], mine)
            with self.round.from_rank(j):
                self.compressor.decode_add_(buf, theirs)
            acc.add_(theirs, alpha=w).sub_(mine, alpha=w)
        if weights:
            x.view(-1).add_(acc, alpha=self.gamma)
        self.t += 1

    def step(self, x: torch.Tensor) -> None:
        """One whole round: ``begin`` then ``finish``."""
        self.begin(x)
        self.finish(x)

    def public_error(self, x: torch.Tensor) -> float:
        """``mean_j ‖x_i − x̂_{i→j}‖²`` over the copies made so far (``‖x_i‖²`` before any):
        the tuner's stand-in for the static ``‖x_i − x̂_i‖²``."""
        if not self.copies:
            return float((x.double() ** 2).sum())
        return float(np.mean([float(((x - c[0]).double() ** 2).sum())
                              for c in self.copies.values()]))

    def state_dict(self) -> dict:
        """Round counter, copies, bytes and the messages of an exchange in flight."""
        return {"round": self.t, "copies": {j: [c.clone() for c in pair]
                                              for j, pair in self.copies.items()},
                **self.round.state()}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`; re-posts saved in-flight messages (collective)."""
        self.t = int(sd.get("round", 0))
        self.copies = {int(j): [c.clone() for c in pair]
                       for j, pair in sd.get("copies", {}).items()}
        self.round.restore(sd)


class TimeVaryingExact(_OnSchedule):
    """Exact D-PSGD on a schedule: send ``x`` to the round's peers, ``x ← Σ_j w_ij^t x_j``."""

    def __init__(self, comm: Communicator, schedule: ScheduleLike) -> None:
        self.round = PeerRound(comm)
        self.schedule = schedule
        self.codec = Identity()
        self.t = 0

    def init(self, x: torch.Tensor) -> None:
        pass

    def begin(self, x: torch.Tensor) -> None:
        message = self.codec.encode(x)
        self.round.post({j: message for j in self.weights()}, message.numel())

    def finish(self, x: torch.Tensor) -> None:
        weights = self.weights()
        sends, received = self.round.wait()
        self.round.check_received(received, self.codec, x.numel())
        if weights:
            sent = decode(self.codec, next(iter(sends.values())), x.dtype, x.device)
            mixed = sent * (1.0 - sum(weights.values()))
            for (j, buf), w in zip(received.items(), weights.values(), strict=True):
                with self.round.from_rank(j):
                    self.codec.decode_add_(buf, mixed, alpha=w)
            x.add_(mixed - sent)
        self.t += 1

    def state_dict(self) -> dict:
        return {"round": self.t, **self.round.state()}

    def load_state_dict(self, sd: dict) -> None:
        self.t = int(sd.get("round", 0))
        self.round.restore(sd)


class GlobalAverage:
    """Any averager plus an exact global average after every ``every``-th round
    (Gossip-PGA, arXiv:2105.09080): ``x_i ← (1/n) Σ_j x_j`` by an all-reduce added in rank
    order (bit-identical on every backend), counted as a ring all-reduce,
    ``2 (n − 1)/n · d · element size`` bytes per node."""

    def __init__(self, inner: Any, comm: Communicator, every: int) -> None:
        if int(every) < 1:
            raise GossipError(f"the global average needs a period >= 1, got {every!r}")
        self.inner = inner
        self.comm = comm
        self.every = int(every)
        self.rounds = 0
        self.average_bytes = 0

    @property
    def synchronous(self) -> bool:
        return bool(self.inner.synchronous)

    @property
    def in_flight(self) -> bool:
        return bool(self.inner.in_flight)

    @property
    def bytes_sent(self) -> int:
        return int(self.inner.bytes_sent) + self.average_bytes

    def init(self, x: torch.Tensor) -> None:
        self.inner.init(x)

    def begin(self, x: torch.Tensor) -> None:
        self.inner.begin(x)

    def progress(self) -> None:
        self.inner.progress()

    def step(self, x: torch.Tensor) -> None:
        """One whole round: ``begin`` then ``finish``."""
        self.begin(x)
        self.finish(x)

    def finish(self, x: torch.Tensor) -> None:
        self.inner.finish(x)
        self.rounds += 1
        if self.rounds % self.every == 0:
            n = self.comm.size
            total = self.comm.allreduce(x.detach().cpu().numpy())
            x.copy_(torch.from_numpy(np.asarray(total) / n).to(x))
            self.average_bytes += round(2 * (n - 1) / n * x.numel() * x.element_size())

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "rounds": self.rounds,
                "average_bytes": self.average_bytes}

    def load_state_dict(self, sd: dict) -> None:
        self.inner.load_state_dict(sd.get("inner", {}))
        self.rounds = int(sd.get("rounds", 0))
        self.average_bytes = int(sd.get("average_bytes", 0))


def make_choco_gossip(comm: Communicator, schedule: ScheduleLike, compressor: Compressor,
                      gamma: float, seed: int = 0) -> Any:
    """CHOCO-Gossip for ``comm.rank`` on ``schedule``: today's :class:`ChocoGossip` on a graph
    that does not change (bit-identical), :class:`TimeVaryingChocoGossip` otherwise, wrapped
    in :class:`GlobalAverage` for a ``+pga:H`` schedule."""
    if schedule.time_varying:
        gossip: Any = TimeVaryingChocoGossip(comm, schedule, compressor, gamma, seed)
    else:
        gossip = ChocoGossip(comm, schedule.row(comm.rank), compressor, gamma, seed)
    return GlobalAverage(gossip, comm, schedule.pga_every) if schedule.pga_every else gossip


def make_exact_gossip(comm: Communicator, schedule: ScheduleLike) -> Any:
    """Exact D-PSGD on ``schedule`` (:class:`ExactGossip` on a graph that does not change)."""
    gossip: Any = (TimeVaryingExact(comm, schedule) if schedule.time_varying
                   else ExactGossip(comm, schedule.row(comm.rank)))
    return GlobalAverage(gossip, comm, schedule.pga_every) if schedule.pga_every else gossip


def schedule_residual(schedule: ScheduleLike, compressor: Compressor, gamma: float, dim: int,
                      steps: int, seed: int = 0) -> float:
    """The γ tuner's score on a schedule: ``(1/n) Σ_i ‖x_i − x̄‖² + mean_j ‖x_i − x̂_{i→j}‖²``
    after ``steps`` rounds of :class:`TimeVaryingChocoGossip` from ``x_i ~ N(0, I)`` (seeded),
    in one process (no global averages: a tuner of the gossip itself)."""
    from .comm.local import LocalNetwork

    n = schedule.n
    net = LocalNetwork([schedule.neighbors(i) for i in range(n)])
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(dim, generator=gen) for _ in range(n)]
    gossips = [TimeVaryingChocoGossip(c, schedule, compressor, gamma, seed) for c in net.comms]
    for _ in range(steps):
        for g, x in zip(gossips, xs, strict=True):
            g.begin(x)
        for g, x in zip(gossips, xs, strict=True):
            g.finish(x)
    X = torch.stack(xs)
    value = (float(((X - X.mean(0)) ** 2).sum())
             + sum(g.public_error(x) for g, x in zip(gossips, xs, strict=True))) / n
    return value if math.isfinite(value) else float("inf")

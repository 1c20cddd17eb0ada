r"""Time-varying graphs: a :class:`Schedule` gives round ``t``'s mixing weights.

Round ``t`` (counted from 0, the first gossip round of a run) has a symmetric, doubly
stochastic, non-negative mixing matrix ``W_t``; a node exchanges only with that round's
peers (the off-diagonal support of its row). The *union graph* holds every edge that is
active in some round: it is the neighbourhood a communicator is built on.

Spec strings (accepted by :func:`topologies.parse_topology`)::

    onepeer:N            one-peer hypercube, N = 2^τ: i ↔ i XOR 2^(t mod τ), weights ½
    base:N[:K]           Base-(K+1) graph, any N, ≤ K peers per round (default K = 1)
    matching:N[:seed=S]  a fresh random perfect matching per round (seed S, default 0)
    SPEC+pga:H           any spec, plus an exact global average every H rounds (Gossip-PGA)

``onepeer`` and ``base`` are periodic and average exactly within one period (their product
over a period is ``11ᵀ/n``); ``matching`` has no period. A static topology
(:class:`~topologies.spec.Topology`) is the schedule of period 1 with ``W_t = W``.

References: one-peer exponential graphs, Ying et al., arXiv:2110.13363; Base-(k+1) graphs,
Takezawa et al., arXiv:2305.11420; Gossip-PGA, Chen et al., arXiv:2105.09080; gossip on
changing topologies, Koloskova et al., arXiv:2003.10422.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from ._validate import canonical_graph
from .errors import TopologyError
from .rounds import Round, base_rounds, matching_round, onepeer_round

if TYPE_CHECKING:  # pragma: no cover
    from .spec import Topology

__all__ = ["Schedule", "base", "matching", "onepeer", "with_pga"]

#: rounds over which the per-round rate of an aperiodic schedule is estimated
RATE_ROUNDS = 32
#: below this distance to ``11ᵀ/n`` a period's product counts as exact averaging
EXACT = 1e-12


class Schedule:
    r"""Round ``t`` → mixing weights, for every rank.

    Parameters
    ----------
    spec
        The spec string it was parsed from.
    n
        Number of nodes.
    round_fn
        ``t ↦`` the round's edges ``(i, j, w)``, ``i < j`` (:mod:`topologies.rounds`).
    period
        Rounds after which the edges repeat; ``None`` if they never do (matching).
    union_edges
        Every edge active in some round (the communicators' neighbourhood).
    pga_every
        ``H``: an exact global average after every ``H``-th round (``None``: never).
    static
        The static :class:`Topology` when the gossip itself does not vary (``ring:16+pga:8``).
    """

    def __init__(self, spec: str, n: int, round_fn: Callable[[int], Round], period: int | None,
                 union_edges: list[tuple[int, int]], pga_every: int | None = None,
                 static: Topology | None = None) -> None:
        self.spec = spec
        self.n = int(n)
        self.period = period
        self.pga_every = pga_every
        self.static = static
        self._round_fn = lru_cache(maxsize=8)(round_fn)
        self.graph = nx.freeze(canonical_graph(self.n, union_edges))

    def __repr__(self) -> str:
        return f"Schedule({self.spec!r}, n={self.n}, period={self.period})"

    # -- what every rank asks per round ---------------------------------------------------
    @property
    def time_varying(self) -> bool:
        """Whether the gossip weights change between rounds (False for ``static+pga:H``)."""
        return self.static is None

    def round_edges(self, t: int) -> Round:
        """Round ``t``'s edges ``(i, j, w)``, ``i < j``, sorted."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise TopologyError(f"the round must be an integer >= 0, got {t!r}")
        if self.static is not None:
            W = self.static.W
            return tuple((i, j, float(W[i, j])) for i, j in self.static.edges)
        return self._round_fn(int(t) % self.period if self.period else int(t))

    def pairs(self, t: int) -> list[tuple[int, int]]:
        """The pairs ``(i, j)``, ``i < j``, that exchange in round ``t``."""
        return [(i, j) for i, j, _ in self.round_edges(t)]

    def round_weights(self, i: int, t: int) -> dict[int, float]:
        """``{j: w_ij^t}`` over rank ``i``'s peers in round ``t``, sorted by ``j``
        (``w_ii^t = 1 − Σ_j w_ij^t``)."""
        self._rank(i)
        out = {j if a == i else a: w for a, j, w in self.round_edges(t) if i in (a, j)}
        return dict(sorted(out.items()))

    def matrix(self, t: int) -> NDArray[np.float64]:
        """``W_t`` as a dense ``n × n`` array (symmetric, doubly stochastic)."""
        W = np.zeros((self.n, self.n))
        for i, j, w in self.round_edges(t):
            W[i, j] = W[j, i] = w
        np.fill_diagonal(W, 1.0 - W.sum(axis=1))
        return W

    # -- the union graph, like Topology --------------------------------------------------
    @cached_property
    def edges(self) -> list[tuple[int, int]]:
        """Sorted edges of the union graph, ``(i, j)`` with ``i < j``."""
        return sorted((min(i, j), max(i, j)) for i, j in self.graph.edges)

    @cached_property
    def degrees(self) -> list[int]:
        """Degree of each rank in the union graph."""
        return [int(self.graph.degree[r]) for r in range(self.n)]

    def neighbors(self, i: int) -> list[int]:
        """Rank ``i``'s neighbours in the union graph (every rank it ever exchanges with)."""
        return sorted(self.graph.neighbors(self._rank(i)))

    @property
    def W(self) -> NDArray[np.float64]:
        """The mixing matrix of a schedule whose gossip does not vary (``ring:16+pga:8``)."""
        if self.static is None:
            raise TopologyError(f"{self.spec!r} changes its mixing matrix every round; use "
                                "matrix(t) or round_weights(i, t) instead of W")
        return self.static.W

    def row(self, i: int) -> NDArray[np.float64]:
        """Row ``i`` of :attr:`W` (static gossip only)."""
        return self.W[self._rank(i)]

    @cached_property
    def spectral_gap(self) -> float:
        r"""Per-round contraction, as a gap: ``1 − ‖Π_{t<P} W_t − 11ᵀ/n‖₂^{1/P}`` over one period
        ``P`` (over :data:`RATE_ROUNDS` rounds without a period); ``1`` for exact averaging
        within the period, the static ``ρ`` for a static schedule. The global averages of
        ``+pga:H`` are not counted."""
        if self.static is not None:
            return self.static.spectral_gap
        rounds = self.period or RATE_ROUNDS
        P = np.eye(self.n)
        for t in range(rounds):
            P = self.matrix(t) @ P
        dist = float(np.linalg.norm(P - 1.0 / self.n, 2))
        return 1.0 if dist < EXACT else 1.0 - dist ** (1.0 / rounds)

    @cached_property
    def max_peers(self) -> int:
        """Most peers any node has in one round (over a period, or :data:`RATE_ROUNDS`)."""
        most = 0
        for t in range(self.period or RATE_ROUNDS):
            count = np.zeros(self.n, dtype=int)
            for i, j, _ in self.round_edges(t):
                count[i] += 1
                count[j] += 1
            most = max(most, int(count.max(initial=0)))
        return most

    def _rank(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.n:
            raise TopologyError(f"rank must be an integer in [0, {self.n}), got {i!r}; "
                                f"schedule {self.spec!r} has {self.n} nodes")
        return int(i)


def onepeer(n: int, spec: str | None = None) -> Schedule:
    """The one-peer hypercube on ``n = 2^τ`` nodes (period ``τ``, one peer per round)."""
    if n < 1 or n & (n - 1):
        below, above = 1 << (n.bit_length() - 1), 1 << n.bit_length()
        raise TopologyError(
            f"onepeer:N needs N a power of two (the hypercube pairs i with i XOR 2^k), got "
            f"{n}; use onepeer:{below} or onepeer:{above}, or base:{n} (exact averaging for "
            "any N with one peer per round)")
    tau = n.bit_length() - 1
    union = [(i, i ^ (1 << b)) for i in range(n) for b in range(tau) if i < i ^ (1 << b)]
    return Schedule(spec or f"onepeer:{n}", n, lambda t: onepeer_round(n, t), max(tau, 1),
                    union)


def base(n: int, k: int = 1, spec: str | None = None) -> Schedule:
    """The Base-(k+1) graph on ``n`` nodes (any ``n``, at most ``k`` peers per round)."""
    rounds = base_rounds(n, k)
    union = sorted({(i, j) for r in rounds for i, j, _ in r})
    return Schedule(spec or f"base:{n}:{k}", n, lambda t: rounds[t], len(rounds), union)


def matching(n: int, seed: int = 0, spec: str | None = None) -> Schedule:
    """A random perfect matching every round (shared ``seed``); union graph: complete."""
    union = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return Schedule(spec or f"matching:{n}:seed={seed}", n,
                    lambda t: matching_round(n, seed, t), None, union)


def with_pga(inner: Topology | Schedule, every: int, spec: str) -> Schedule:
    """``inner`` plus an exact global average after every ``every``-th round."""
    if not isinstance(inner, Schedule):
        return Schedule(spec, inner.n, lambda t: (), 1, inner.edges, every, static=inner)
    if inner.pga_every is not None:
        raise TopologyError(f"topology {spec!r} has two +pga modifiers; give one, e.g. "
                            f"{spec.split('+')[0]}+pga:{every}")
    return Schedule(spec, inner.n, inner._round_fn, inner.period, inner.edges, every,
                    inner.static)

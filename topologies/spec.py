"""Topology specs: ``"ring:16"`` -> a validated :class:`Topology` (graph + mixing matrix).

Valid forms (see :data:`SPEC_FORMS`)::

    ring:N  torus:RxC  torus:N  social  complete:N  star:N  exponential:N
    er:N:P[:seed=S]  file:PATH
    onepeer:N  base:N[:K]  matching:N[:seed=S]      (time-varying: a Schedule)
    SPEC+pga:H                                       (any of them, plus a global average)

``file:PATH`` reads an edge list (lines ``i j``), or, for a path ending in ``.npy``, a
mixing matrix saved with ``numpy.save`` that is used as is (its mixing is reported as
``"file"``). Every :class:`Topology` has its ``W`` checked by
:func:`~topologies.mixing.check_mixing_matrix`.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import networkx as nx
import numpy as np
from numpy.typing import NDArray

from . import graphs, schedule
from ._validate import require_memory
from .errors import SpectralGapWarning, TopologyError
from .mixing import (
    MIXING_RULES,
    beta,
    check_mixing_matrix,
    load_mixing_matrix,
    mixing_matrix,
    spectral_gap,
    support_graph,
)
from .schedule import Schedule

__all__ = ["SPEC_FORMS", "Topology", "parse_topology"]

SPEC_FORMS: tuple[str, ...] = (
    "ring:N",
    "torus:RxC",
    "torus:N",
    "social",
    "complete:N",
    "star:N",
    "exponential:N",
    "er:N:P[:seed=S]",
    "file:PATH",
    "onepeer:N",
    "base:N[:K]",
    "matching:N[:seed=S]",
    "SPEC+pga:H",
)
"""The spec strings :func:`parse_topology` accepts (the last four give a
:class:`~topologies.schedule.Schedule`)."""


@dataclass(frozen=True, eq=False)
class Topology:
    r"""A communication graph with its validated mixing matrix.

    Node ``r`` of ``graph`` is rank ``r``; row ``r`` of ``W`` holds the weights
    :math:`w_{rj}` that rank ``r`` applies in CHOCO-Gossip's
    :math:`s_r = \sum_j w_{rj} \hat{x}_j` (arXiv:1907.09356, Algorithm 1).

    Construction checks ``W`` with :func:`~topologies.mixing.check_mixing_matrix` and that
    its off-diagonal support is exactly the edge set of ``graph``; ``W`` is stored as a
    read-only float64 copy and ``graph`` as a frozen copy (``networkx.freeze``).
    """

    spec: str  # the spec string it was parsed from, e.g. "torus:4x4"
    graph: nx.Graph  # undirected simple graph, nodes 0..n-1
    W: NDArray[np.float64] = field(repr=False)  # n x n mixing matrix
    mixing: str  # rule name ("metropolis", "maxdegree", "uniform") or "file"

    def __post_init__(self) -> None:
        """Validate ``W`` against ``graph`` and freeze a float64 copy of it."""
        matrix = check_mixing_matrix(self.W)
        n = matrix.shape[0]
        if self.graph.number_of_nodes() != n or set(self.graph) != set(range(n)):
            raise TopologyError(
                f"Topology {self.spec!r} needs a graph on nodes 0..{n - 1} to match W "
                f"({n}x{n}), got {self.graph.number_of_nodes()} nodes; rebuild both together"
            )
        support = {tuple(sorted(edge)) for edge in support_graph(matrix).edges}
        edges = {tuple(sorted(edge)) for edge in self.graph.edges}
        if support != edges:
            i, j = min(support ^ edges)
            raise TopologyError(
                f"Topology {self.spec!r} needs W non-zero exactly on the graph's edges, but "
                f"pair ({i}, {j}) has W[{i},{j}] = {matrix[i, j]!r} and is "
                f"{'' if (i, j) in edges else 'not '}an edge; build W with mixing_matrix(graph)"
            )
        matrix.setflags(write=False)
        object.__setattr__(self, "W", matrix)
        # A frozen copy keeps edges/degrees consistent with W (cached properties rely on it).
        object.__setattr__(self, "graph", nx.freeze(self.graph.copy()))

    @property
    def n(self) -> int:
        """Number of nodes (ranks)."""
        return int(self.W.shape[0])

    @cached_property
    def edges(self) -> list[tuple[int, int]]:
        """Sorted edge list, each edge as ``(i, j)`` with ``i < j``."""
        return sorted((min(i, j), max(i, j)) for i, j in self.graph.edges)

    @cached_property
    def degrees(self) -> list[int]:
        """Degree of each rank, indexed by rank."""
        return [int(self.graph.degree[r]) for r in range(self.n)]

    @cached_property
    def spectral_gap(self) -> float:
        r""":math:`\rho = 1 - \max_{k \ge 2} |\lambda_k(W)|`."""
        return spectral_gap(self.W)

    @cached_property
    def beta(self) -> float:
        r""":math:`\beta = \|I - W\|_2`."""
        return beta(self.W)

    # -- a static topology is the schedule of period 1 (topologies.schedule) -------------
    period: ClassVar[int] = 1
    pga_every: ClassVar[int | None] = None
    time_varying: ClassVar[bool] = False

    def round_edges(self, t: int) -> tuple[tuple[int, int, float], ...]:
        """Every round's edges ``(i, j, w_ij)``, ``i < j`` (the same in every round)."""
        return tuple((i, j, float(self.W[i, j])) for i, j in self.edges)

    def pairs(self, t: int) -> list[tuple[int, int]]:
        """The pairs exchanging in round ``t``: every edge."""
        return list(self.edges)

    def round_weights(self, i: int, t: int) -> dict[int, float]:
        """``{j: w_ij}`` over rank ``i``'s neighbours (any round)."""
        return {j: float(self.W[self._rank(i), j]) for j in self.neighbors(i)}

    def matrix(self, t: int) -> NDArray[np.float64]:
        """``W`` (any round)."""
        return self.W

    @property
    def max_peers(self) -> int:
        """Most peers of a node in a round: the largest degree."""
        return max(self.degrees, default=0)

    def neighbors(self, i: int) -> list[int]:
        """Sorted neighbours of rank ``i`` (excluding ``i``)."""
        return sorted(self.graph.neighbors(self._rank(i)))

    def row(self, i: int) -> NDArray[np.float64]:
        """Row ``i`` of ``W`` (read-only): the weights rank ``i`` gives every rank."""
        weights: NDArray[np.float64] = self.W[self._rank(i)]
        return weights

    def _rank(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.n:
            raise TopologyError(
                f"rank must be an integer in [0, {self.n}), got {i!r}; "
                f"topology {self.spec!r} has {self.n} nodes"
            )
        return int(i)


_NATURAL = re.compile(r"[0-9]+")
_SHAPE = re.compile(r"([0-9]+)[xX]([0-9]+)")


def _count(text: str, spec: str, example: str) -> int:
    """Parse a positive integer field of ``spec`` (digits only, >= 1)."""
    if not _NATURAL.fullmatch(text) or int(text) < 1:
        raise TopologyError(
            f"topology {spec!r}: N must be a positive integer, got {text!r}; e.g. {example}"
        )
    return int(text)


def _single_count(name: str) -> Callable[[list[str], str], nx.Graph]:
    """Parser for ``name:N`` specs calling ``graphs.<builder>(N)``."""
    builders: dict[str, tuple[Callable[[int], nx.Graph], Callable[[int], int]]] = {
        "ring": (graphs.ring, graphs.ring_edges),
        "complete": (graphs.complete, graphs.complete_edges),
        "star": (graphs.star, graphs.star_edges),
        "exponential": (graphs.exponential, graphs.exponential_edges),
    }

    def parse(args: list[str], spec: str) -> nx.Graph:
        _arity(args, 1, spec, f"{name}:N, e.g. {name}:8")
        n = _count(args[0], spec, f"{name}:8")
        build, edges = builders[name]
        require_memory(f"topology {spec!r}", n, edges)
        return build(n)

    return parse


def _arity(args: list[str], count: int, spec: str, form: str) -> None:
    if len(args) != count:
        raise TopologyError(
            f"topology {spec!r} must have the form {form}, got {len(args)} argument(s)"
        )


def _torus(args: list[str], spec: str) -> nx.Graph:
    _arity(args, 1, spec, "torus:RxC or torus:N, e.g. torus:4x4")
    shape = _SHAPE.fullmatch(args[0])
    if shape:
        r, c = _count(shape[1], spec, "torus:4x4"), _count(shape[2], spec, "torus:4x4")
        require_memory(f"topology {spec!r}", r * c, graphs.torus_edges)
        return graphs.torus(r, c)
    n = _count(args[0], spec, "torus:16")
    require_memory(f"topology {spec!r}", n, graphs.torus_edges)
    return graphs.torus(n)


def _social(args: list[str], spec: str) -> nx.Graph:
    _arity(args, 0, spec, "social (no arguments: the 32-node Davis graph)")
    return graphs.social()


def _erdos_renyi(args: list[str], spec: str) -> nx.Graph:
    form = "er:N:P[:seed=S], e.g. er:64:0.1:seed=3"
    if len(args) not in (2, 3):
        _arity(args, 2, spec, form)
    n = _count(args[0], spec, "er:64:0.1")
    try:
        p = float(args[1])
    except ValueError:
        p = math.nan
    if not 0.0 < p <= 1.0:
        raise TopologyError(
            f"topology {spec!r}: P must be a probability in (0, 1], got {args[1]!r}; {form}"
        )
    seed = 0
    if len(args) == 3:
        key, _, value = args[2].partition("=")
        if key != "seed" or not _NATURAL.fullmatch(value):
            raise TopologyError(
                f"topology {spec!r}: the optional third field must be seed=S with S a "
                f"non-negative integer, got {args[2]!r}; {form}"
            )
        seed = int(value)
    require_memory(f"topology {spec!r}", n, lambda k: graphs.er_edges(k, p))
    return graphs.erdos_renyi(n, p, seed)


_PARSERS: dict[str, Callable[[list[str], str], nx.Graph]] = {
    "ring": _single_count("ring"),
    "torus": _torus,
    "social": _social,
    "complete": _single_count("complete"),
    "star": _single_count("star"),
    "exponential": _single_count("exponential"),
    "er": _erdos_renyi,
}


def parse_topology(spec: str, mixing: str = "metropolis") -> Topology | Schedule:
    """Build a validated :class:`Topology` (or, for a time-varying spec, a
    :class:`~topologies.schedule.Schedule`) from a spec string.

    Parameters
    ----------
    spec
        One of :data:`SPEC_FORMS`, e.g. ``"ring:16"``, ``"torus:4x4"``, ``"torus:8"`` (2x4),
        ``"social"``, ``"er:64:0.1:seed=3"`` (seed defaults to 0), ``"file:edges.txt"``,
        ``"file:W.npy"``; time-varying: ``"onepeer:16"``, ``"base:12"``, ``"base:12:2"``,
        ``"matching:16:seed=3"``, and ``"ring:16+pga:8"`` (any spec plus an exact global
        average every 8 rounds). Names are case-insensitive.
    mixing
        Weight rule, one of :data:`~topologies.mixing.MIXING_RULES`. Ignored, with a
        warning unless it is the default, for a ``.npy`` file, whose weights are used as
        stored (``Topology.mixing == "file"``).

    Raises
    ------
    TopologyError
        Unknown name (the message lists :data:`SPEC_FORMS`), malformed numbers, a graph the
        builder rejects, or a mixing matrix that fails
        :func:`~topologies.mixing.check_mixing_matrix`.

    Examples
    --------
    >>> topo = parse_topology("ring:8")
    >>> topo.n, len(topo.edges), round(topo.spectral_gap, 3)
    (8, 8, 0.195)
    """
    if not isinstance(spec, str):
        raise TopologyError(
            f"topology spec must be a string such as 'ring:8', got {type(spec).__name__}"
        )
    if mixing not in MIXING_RULES:
        close = difflib.get_close_matches(str(mixing), MIXING_RULES, n=1)
        fix = f"did you mean {close[0]}? (metropolis is valid on every graph)" if close \
            else "use metropolis (valid on every graph)"
        raise TopologyError(
            f"mixing rule must be one of {', '.join(MIXING_RULES)}, got {mixing!r}; {fix}"
        )
    text = spec.strip()
    if "+" in text:
        return parse_modified(text, mixing)
    name, colon, rest = text.partition(":")
    name = name.strip().lower()
    if name in SCHEDULE_PARSERS:
        return SCHEDULE_PARSERS[name](rest.split(":") if colon else [], text)
    if name == "file":
        return _from_file(rest, text, mixing)
    parser = _PARSERS.get(name)
    if parser is None:
        close = difflib.get_close_matches(name, [*_PARSERS, "file"], n=1)
        hint = f"did you mean {close[0]}{colon}{rest}? " if close else ""
        raise TopologyError(
            f"topology spec must be one of {', '.join(SPEC_FORMS)}, got {spec!r}; "
            f"{hint}e.g. ring:16, torus:4x4, social, er:64:0.1:seed=3"
        )
    graph = parser(rest.split(":") if colon else [], text)
    return Topology(text, graph, mixing_matrix(graph, mixing), mixing)


def parse_modified(text: str, mixing: str) -> Schedule:
    """``SPEC+pga:H``: the schedule ``SPEC`` plus an exact global average every ``H`` rounds."""
    inner, *mods = [part.strip() for part in text.split("+")]
    form = "SPEC+pga:H with H >= 1, e.g. ring:16+pga:8"
    if not mods or not inner:
        raise TopologyError(f"topology {text!r} must have the form {form}")
    result: Topology | Schedule = parse_topology(inner, mixing)
    for mod in mods:
        key, _, value = mod.partition(":")
        if key.strip().lower() != "pga" or not _NATURAL.fullmatch(value) or int(value) < 1:
            raise TopologyError(f"topology {text!r}: the modifier after '+' must be pga:H "
                                f"with H a positive integer, got {mod!r}; {form}")
        result = schedule.with_pga(result, int(value), text)
    return result  # type: ignore[return-value]  # mods is not empty: a Schedule


def _seed(field_text: str, spec: str, form: str) -> int:
    key, _, value = field_text.partition("=")
    if key.strip().lower() != "seed" or not _NATURAL.fullmatch(value.strip()):
        raise TopologyError(f"topology {spec!r}: the optional field must be seed=S with S a "
                            f"non-negative integer, got {field_text!r}; {form}")
    return int(value)


def _onepeer(args: list[str], spec: str) -> Schedule:
    _arity(args, 1, spec, "onepeer:N (N a power of two), e.g. onepeer:16")
    n = _count(args[0], spec, "onepeer:16")
    require_memory(f"topology {spec!r}", n, lambda k: k * max(k.bit_length(), 1), dense=False)
    return schedule.onepeer(n, spec)


def _base(args: list[str], spec: str) -> Schedule:
    form = "base:N[:K] (N nodes, at most K peers per round, default 1), e.g. base:12"
    if len(args) not in (1, 2):
        _arity(args, 1, spec, form)
    n = _count(args[0], spec, "base:12")
    k = 1
    if len(args) == 2:
        if not _NATURAL.fullmatch(args[1]) or int(args[1]) < 1:
            raise TopologyError(f"topology {spec!r}: K (peers per round) must be a positive "
                                f"integer, got {args[1]!r}; {form}")
        k = min(int(args[1]), max(n - 1, 1))
    require_memory(f"topology {spec!r}", n, lambda m: m * k * max(m.bit_length(), 1),
                   dense=False)
    return schedule.base(n, k, spec)


def _matching(args: list[str], spec: str) -> Schedule:
    form = "matching:N[:seed=S], e.g. matching:16:seed=3"
    if len(args) not in (1, 2):
        _arity(args, 1, spec, form)
    n = _count(args[0], spec, "matching:16")
    seed = _seed(args[1], spec, form) if len(args) == 2 else 0
    require_memory(f"topology {spec!r}", n, graphs.complete_edges, dense=False)
    return schedule.matching(n, seed, spec)


#: the time-varying spec names and their parsers
SCHEDULE_PARSERS: dict[str, Callable[[list[str], str], Schedule]] = {
    "onepeer": _onepeer,
    "base": _base,
    "matching": _matching,
}


def _from_file(path: str, spec: str, mixing: str) -> Topology:
    if not path.strip():
        raise TopologyError(
            f"topology {spec!r} must name a file, got an empty path; e.g. file:edges.txt "
            "(lines 'i j') or file:W.npy (a saved mixing matrix)"
        )
    if path.endswith(".npy"):
        if mixing != "metropolis":
            warnings.warn(
                f"mixing={mixing!r} is ignored for {spec!r}: a .npy file holds its own weights",
                UserWarning,
                stacklevel=3,
            )
        with warnings.catch_warnings():
            # Topology() re-checks W and emits the same warning once, from one place.
            warnings.simplefilter("ignore", SpectralGapWarning)
            matrix = load_mixing_matrix(path)
        return Topology(spec, support_graph(matrix), matrix, "file")
    graph = graphs.from_file(path)
    return Topology(spec, graph, mixing_matrix(graph, mixing), mixing)

"""Graph builders: communication graphs whose node ``r`` is MPI rank ``r``.

Every builder returns an undirected simple :class:`networkx.Graph` with nodes
``0, 1, ..., n-1`` inserted in that order, so rank ``r`` is node ``r`` and also the
``r``-th node in networkx insertion order. Degrees are real degrees (no duplicate edges,
no self-loops). Mixing weights are added by :func:`topologies.mixing.mixing_matrix`.

The graphs are those of CHOCO-SGD's experiments (Koloskova et al., arXiv:1907.09356,
Table 2 and the social-graph experiments: ring, torus, social) plus common extras.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from pathlib import Path

import networkx as nx

from ._validate import canonical_graph, positive_int, require_memory, unreachable_node
from .errors import TopologyError
from .mixing import load_mixing_matrix, support_graph

__all__ = [
    "complete",
    "erdos_renyi",
    "exponential",
    "from_file",
    "ring",
    "social",
    "star",
    "torus",
]


def ring_edges(n: int) -> int:
    """Edges of ``ring(n)``."""
    return n if n > 2 else n - 1


def torus_edges(n: int) -> int:
    """Edges of an ``r x c`` torus with ``n = r c`` nodes (at most; fewer with a side of 2)."""
    return 2 * n


def complete_edges(n: int) -> int:
    """Edges of ``complete(n)``."""
    return n * (n - 1) // 2


def star_edges(n: int) -> int:
    """Edges of ``star(n)``."""
    return n - 1


def exponential_edges(n: int) -> int:
    """Edges of ``exponential(n)`` (at most: hops of n/2 coincide)."""
    return n * (n - 1).bit_length()


def er_edges(n: int, p: float) -> int:
    """Expected edges of ``erdos_renyi(n, p)``."""
    return int(Fraction(p) * (n * (n - 1) // 2))  # exact: n may be any size


def ring(n: int) -> nx.Graph:
    r"""Ring (cycle) of ``n`` nodes: ``i`` is linked to ``(i - 1) mod n`` and ``(i + 1) mod n``.

    Parameters
    ----------
    n
        Number of nodes, ``n >= 1``. ``ring(1)`` is a single node without edges and
        ``ring(2)`` a single edge, so size-agnostic code (``ring(world_size)``) works for
        every world size.

    Returns
    -------
    networkx.Graph
        Isomorphic to ``networkx.cycle_graph(n)`` for ``n >= 3``.

    Notes
    -----
    With Metropolis weights every entry of a row is 1/3 and the spectral gap is
    :math:`\rho = 1 - (1 + 2\cos(2\pi/n))/3 = O(1/n^2)`, e.g. 0.195 for ``n = 8``
    (arXiv:1907.09356, Table 2).

    Examples
    --------
    >>> sorted(ring(4).edges)
    [(0, 1), (0, 3), (1, 2), (2, 3)]
    """
    n = positive_int(n, "ring(n): n", "e.g. ring(8)")
    require_memory(f"ring({n})", n, ring_edges, dense=False)
    return canonical_graph(n, ((i, (i + 1) % n) for i in range(n) if n > 1))


def _square_side(n: int) -> int:
    """Largest divisor ``r`` of ``n`` with ``r <= sqrt(n)``."""
    return max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)


def torus(r: int, c: int | None = None) -> nx.Graph:
    r"""Two-dimensional torus (periodic grid) of ``r x c`` nodes.

    Node :math:`(i, j)` of ``networkx.grid_2d_graph(r, c, periodic=True)`` is rank
    :math:`i c + j` (row-major, the order of ``sorted(grid_2d_graph(r, c))``).

    Parameters
    ----------
    r
        Number of rows, or, when ``c`` is omitted, the total number of nodes ``n``; the
        shape is then ``r x n/r`` with ``r`` the largest divisor of ``n`` that is at most
        :math:`\sqrt{n}` (``torus(16)`` is 4x4, ``torus(8)`` is 2x4).
    c
        Number of columns.

    Returns
    -------
    networkx.Graph
        Degree 4, or 3 with one side of 2, or 2 for 2x2 (the 4-cycle): a side of 2 wraps
        onto the existing edge, and counting it twice (as the authors' code does) makes
        rows of :math:`W` sum to 0.8 instead of 1.

    Raises
    ------
    TopologyError
        If a side is 1 (that torus is a ring: use :func:`ring`), e.g. for a prime ``n``.

    Examples
    --------
    >>> dict(torus(3, 3).degree)[4]
    4
    >>> sorted(torus(8).degree)[0]
    (0, 3)
    """
    if c is None:
        n = positive_int(r, "torus(n): n", "e.g. torus(16) for a 4x4 torus")
        require_memory(f"torus({n})", n, torus_edges, dense=False)
        r, c = _square_side(n), n // _square_side(n)
        if r == 1:
            raise TopologyError(
                f"torus(n) needs n with a divisor r in [2, sqrt(n)], got n={n} (it would be "
                f"1x{n}, which is a ring); use ring({n}) (spec ring:{n}) or an n such as "
                f"{max(4, n - n % 4)}"
            )
    r = positive_int(r, "torus(r, c): r", "e.g. torus(4, 4)")
    c = positive_int(c, "torus(r, c): c", "e.g. torus(4, 4)")
    if r == 1 or c == 1:
        raise TopologyError(
            f"torus(r, c) needs both sides >= 2, got {r}x{c}; a 1-wide torus is a ring: "
            f"use ring({r * c}) (spec ring:{r * c})"
        )
    require_memory(f"torus({r}, {c})", r * c, torus_edges, dense=False)
    grid = nx.grid_2d_graph(r, c, periodic=True)
    rank = {node: k for k, node in enumerate(sorted(grid))}  # (i, j) -> i*c + j
    return canonical_graph(r * c, ((rank[u], rank[v]) for u, v in grid.edges))


def social() -> nx.Graph:
    """Davis Southern Women graph: the "social" topology of CHOCO-SGD.

    As used in arXiv:1907.09356 (social-graph experiments, Table 3).

    Bipartite, 32 nodes, 89 edges, degrees 2 to 14: the 18 women are ranks 0-17 and the
    14 events ranks 18-31, in the order of ``networkx.davis_southern_women_graph()``.
    Each node keeps its original name in the node attribute ``"label"`` and its side in
    ``"bipartite"`` (0 women, 1 events).

    Examples
    --------
    >>> G = social()
    >>> G.number_of_nodes(), G.number_of_edges(), G.nodes[18]["label"]
    (32, 89, 'E1')
    """
    davis = nx.davis_southern_women_graph()
    rank = {name: k for k, name in enumerate(davis)}
    graph = canonical_graph(len(rank), ((rank[u], rank[v]) for u, v in davis.edges))
    for name, k in rank.items():
        graph.nodes[k]["label"] = name
        graph.nodes[k]["bipartite"] = davis.nodes[name]["bipartite"]
    return graph


def complete(n: int) -> nx.Graph:
    r"""Complete graph on ``n`` nodes.

    Its Metropolis matrix is :math:`W = \mathbf{1}\mathbf{1}^T/n`, with :math:`\rho = 1`.

    Examples
    --------
    >>> complete(4).number_of_edges()
    6
    """
    n = positive_int(n, "complete(n): n", "e.g. complete(8)")
    require_memory(f"complete({n})", n, complete_edges, dense=False)
    return canonical_graph(n, ((i, j) for i in range(n) for j in range(i + 1, n)))


def star(n: int) -> nx.Graph:
    """Star of ``n`` nodes with centre 0: edges ``(0, j)`` for ``j = 1..n-1``.

    Not regular, so the ``uniform`` rule rejects it.

    Examples
    --------
    >>> sorted(star(4).edges)
    [(0, 1), (0, 2), (0, 3)]
    """
    n = positive_int(n, "star(n): n", "e.g. star(8)")
    require_memory(f"star({n})", n, star_edges, dense=False)
    return canonical_graph(n, ((0, j) for j in range(1, n)))


def exponential(n: int) -> nx.Graph:
    r"""Undirected exponential graph on ``n`` nodes.

    Node :math:`i` is linked to :math:`(i \pm 2^k) \bmod n` for every :math:`2^k < n`.

    Degree :math:`O(\log_2 n)` with a spectral gap that does not vanish as fast as the
    ring's (Ying et al., "Exponential Graph is Provably Efficient for Decentralized Deep
    Training", arXiv:2110.13363).

    Examples
    --------
    >>> sorted(exponential(8).neighbors(0))
    [1, 2, 4, 6, 7]
    """
    n = positive_int(n, "exponential(n): n", "e.g. exponential(16)")
    require_memory(f"exponential({n})", n, exponential_edges, dense=False)
    hops = [2**k for k in range(n.bit_length()) if 2**k < n]
    return canonical_graph(n, ((i, (i + h) % n) for i in range(n) for h in hops))


def erdos_renyi(n: int, p: float, seed: int = 0) -> nx.Graph:
    r"""Erdos-Renyi graph :math:`G(n, p)` from ``networkx.gnp_random_graph(n, p, seed)``.

    Parameters
    ----------
    n
        Number of nodes, ``n >= 1``.
    p
        Edge probability in ``(0, 1]``.
    seed
        Integer seed; the same ``(n, p, seed)`` gives the same graph on every rank.

    Raises
    ------
    TopologyError
        If the sampled graph is disconnected (gossip could never mix it): the message names
        a node unreachable from node 0 and suggests a larger ``p`` (connected with high
        probability for :math:`p > \ln(n)/n`) or another seed.
    """
    n = positive_int(n, "erdos_renyi(n, p, seed): n", "e.g. erdos_renyi(32, 0.2)")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise TopologyError(
            f"erdos_renyi(n, p, seed): p must be a probability in (0, 1], got {p!r}; "
            "e.g. erdos_renyi(32, 0.2)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TopologyError(
            f"erdos_renyi(n, p, seed): seed must be a non-negative integer, got {seed!r}"
        )
    require_memory(f"erdos_renyi({n}, {p})", n, lambda k: er_edges(k, p), dense=False)
    sampled = nx.gnp_random_graph(n, float(p), seed=seed)
    graph = canonical_graph(n, sampled.edges)
    lost = unreachable_node(graph)
    if lost is not None:
        hint = math.log(n) / n
        raise TopologyError(
            f"erdos_renyi(n={n}, p={p}, seed={seed}) must be connected, but node {lost} is "
            f"not reachable from node 0; use a larger p (above ln(n)/n = {hint:.3g} for "
            "connectivity with high probability) or another seed"
        )
    return graph


def from_file(path: str | os.PathLike[str]) -> nx.Graph:
    """Read a graph from an edge-list text file, or the support of a ``.npy`` mixing matrix.

    Edge-list format: one edge ``i j`` per line (whitespace separated non-negative
    integers); ``#`` starts a comment; blank lines are ignored; duplicate edges collapse.
    The nodes must be exactly ``0..n-1`` (every rank appears in some edge, or alone on a
    line to declare a single-node graph) and the graph must be connected.

    A path ending in ``.npy`` holds a mixing matrix instead; it is validated with
    :func:`~topologies.mixing.check_mixing_matrix` and its graph (the non-zero off-diagonal
    support) is returned. To keep its weights, use ``parse_topology("file:PATH")`` or
    :func:`~topologies.mixing.load_mixing_matrix`.

    Raises
    ------
    TopologyError
        If the file cannot be read, a line is malformed (the line number is given), a node
        is missing from ``0..n-1``, an edge is a self-loop, or the graph is disconnected.

    Examples
    --------
    A file with the lines ``0 1``, ``1 2`` and ``2 0`` gives the triangle ``ring(3)``.
    """
    file = Path(path)
    if file.suffix == ".npy":
        return support_graph(load_mixing_matrix(file))
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(
            f"edge-list file {str(file)!r} must be a readable UTF-8 text file, got: {exc}; "
            "check the path (lines 'i j', '#' comments)"
        ) from exc
    nodes, edges = _parse_edge_list(text, file)
    if not nodes:
        raise TopologyError(
            f"edge-list file {str(file)!r} must hold at least one node, got no 'i j' lines; "
            "write one edge per line, e.g. '0 1'"
        )
    n = max(nodes) + 1
    require_memory(f"edge-list file {str(file)!r}", n, lambda k: len(edges), dense=False)
    missing = sorted(set(range(n)) - nodes)
    if missing:
        raise TopologyError(
            f"edge-list file {str(file)!r} must use the nodes 0..{n - 1} (ranks), but node "
            f"{missing[0]} never appears ({len(missing)} missing); renumber the nodes from 0"
        )
    graph = canonical_graph(n, edges)
    lost = unreachable_node(graph)
    if lost is not None:
        raise TopologyError(
            f"edge-list file {str(file)!r} must describe a connected graph, but node {lost} "
            "is not reachable from node 0; add an edge joining the components"
        )
    return graph


_INTEGER = re.compile(r"[0-9]+")


def _parse_edge_list(text: str, file: Path) -> tuple[set[int], list[tuple[int, int]]]:
    """Parse ``i j`` lines into (node set, edge list); raise with the line number."""
    nodes: set[int] = set()
    edges: list[tuple[int, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{str(file)!r} line {number}"
        if len(fields) > 2 or not all(_INTEGER.fullmatch(field) for field in fields):
            raise TopologyError(
                f"edge-list {where} must be 'i j' with non-negative integers, got {raw!r}; "
                "remove weights or other columns"
            )
        ends = [int(field) for field in fields]
        if len(ends) == 2:
            if ends[0] == ends[1]:
                raise TopologyError(
                    f"edge-list {where} must join two different nodes, got the self-loop "
                    f"{raw.strip()!r}; delete it (self-weights come from the mixing rule)"
                )
            edges.append((ends[0], ends[1]))
        nodes.update(ends)
    return nodes, edges

"""Argument checks shared by the builders (private)."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable

import networkx as nx

from .errors import TopologyError
from .memory import check_memory, format_bytes, format_count, largest, memory_limit

#: bytes per node and per edge of the networkx graphs a topology holds (the one built, its
#: frozen copy and the support graph of W; measured: about 680 bytes per edge in total)
NODE_BYTES = 2_000
EDGE_BYTES = 700
#: dense n x n float64 arrays alive at once while W is built and checked (W, its checked
#: copy, |W - W^T|, the support mask, eigvalsh's copy and workspace; measured: 6.0 on rings)
W_COPIES = 6


def topology_bytes(n: int, edges: int, dense: bool = True) -> int:
    """Estimated peak memory of a topology with ``n`` nodes and ``edges`` edges.

    ``dense``: include the n x n float64 mixing matrix (``W_COPIES`` of them), else only
    the networkx graph.
    """
    return NODE_BYTES * n + EDGE_BYTES * edges + (W_COPIES * 8 * n * n if dense else 0)


def require_memory(what: str, n: int, edges_of: Callable[[int], int], *,
                   dense: bool = True) -> None:
    """Refuse, before anything is allocated, a topology whose estimate exceeds the limit.

    ``edges_of(k)``: the number of edges of the same family with ``k`` nodes, used to name
    the largest size that fits.
    """
    need = topology_bytes(n, edges_of(n), dense)
    limit, _ = memory_limit(TopologyError)
    if need <= limit:
        return
    most = largest(lambda k: topology_bytes(k, edges_of(k), dense) <= limit, high=n)
    if dense:
        detail = (f"n = {format_count(n)} nodes and {format_count(edges_of(n))} edges (the "
                  f"dense n × n float64 mixing matrix W alone is n²·8 = "
                  f"{format_bytes(8 * n * n)}; building and checking it holds about "
                  f"{W_COPIES} such arrays plus the networkx graphs)")
    else:
        detail = (f"n = {format_count(n)} nodes and {format_count(edges_of(n))} edges (about "
                  f"{NODE_BYTES} bytes per node and {EDGE_BYTES} per edge in networkx)")
    fix = f"use at most n = {format_count(most)} nodes" if most else "use fewer nodes"
    check_memory(need, what, detail, fix, TopologyError)


def positive_int(value: object, what: str, fix: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1, else raise.

    Parameters
    ----------
    value
        The value received (``bool`` is rejected even though it is an ``int``).
    what
        Name of the argument in the message, e.g. ``"ring(n): n"``.
    fix
        An example of a valid call, appended to the message.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TopologyError(f"{what} must be a positive integer, got {value!r}; {fix}")
    return int(value)


def canonical_graph(n: int, edges: Iterable[tuple[int, int]]) -> nx.Graph:
    """Build an undirected simple graph with nodes ``0..n-1`` inserted in order.

    Inserting the nodes first makes ``list(G)`` equal ``range(n)``: rank ``r`` is node
    ``r`` and also the ``r``-th node in networkx insertion order. Duplicate edges collapse
    (``nx.Graph`` is simple), so degrees are real degrees.
    """
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(sorted((min(i, j), max(i, j)) for i, j in edges))
    return graph


def unreachable_node(graph: nx.Graph) -> int | None:
    """Return the smallest node not reachable from node 0, or ``None`` if connected."""
    if graph.number_of_nodes() == 0:
        return None
    reached = nx.node_connected_component(graph, 0)
    missing = [node for node in graph if node not in reached]
    return min(missing) if missing else None

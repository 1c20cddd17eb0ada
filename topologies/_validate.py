"""Argument checks shared by the builders (private)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import networkx as nx

from .errors import TopologyError


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

"""Communication graphs and mixing matrices for CHOCO-SGD gossip.

Builders return :class:`networkx.Graph` objects whose node ``r`` is MPI rank ``r``;
:func:`mixing_matrix` turns a graph into a symmetric doubly stochastic ``W``;
:func:`check_mixing_matrix` validates any ``W``; :func:`parse_topology` does both from a
spec string such as ``"torus:4x4"``. References: CHOCO-SGD (Koloskova, Lin, Stich, Jaggi,
arXiv:1907.09356) and CHOCO-Gossip (Koloskova, Stich, Jaggi, arXiv:1902.00340).

This package depends on numpy and networkx only (never torch or mpi4py), so it can be used
to prepare and inspect ``W`` anywhere: ``python -m topologies torus:4x4 --json``.

Examples
--------
>>> from topologies import parse_topology
>>> topo = parse_topology("torus:3x3")
>>> topo.n, topo.degrees[0], round(topo.spectral_gap, 3), topo.neighbors(0)
(9, 4, 0.6, [1, 2, 3, 6])
"""

from __future__ import annotations

from .errors import SpectralGapWarning, TopologyError
from .graphs import complete, erdos_renyi, exponential, from_file, ring, social, star, torus
from .mixing import (
    MIXING_RULES,
    beta,
    check_mixing_matrix,
    load_mixing_matrix,
    mixing_matrix,
    spectral_gap,
    support_graph,
)
from .schedule import Schedule, base, matching, onepeer
from .spec import SPEC_FORMS, Topology, parse_topology

__all__ = [
    "MIXING_RULES",
    "SPEC_FORMS",
    "Schedule",
    "SpectralGapWarning",
    "Topology",
    "TopologyError",
    "base",
    "beta",
    "check_mixing_matrix",
    "complete",
    "erdos_renyi",
    "exponential",
    "from_file",
    "load_mixing_matrix",
    "matching",
    "mixing_matrix",
    "onepeer",
    "parse_topology",
    "ring",
    "social",
    "spectral_gap",
    "star",
    "support_graph",
    "torus",
]

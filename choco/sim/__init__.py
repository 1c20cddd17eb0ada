"""A simulated network for the in-process backend: the α–β model, its clock and its spec.

* :mod:`choco.sim.model`: the link and node model shared with ``python -m choco.bench
  whatif`` (message, gossip and all-reduce times; one node's round);
* :mod:`choco.sim.spec`: ``--network SPEC`` parsed into a :class:`NetworkSpec`;
* :mod:`choco.sim.clock`: :class:`NetworkClock`, the per-node simulated time of a
  :class:`~choco.comm.LocalNetwork` built with ``network=SPEC``, and the hooks
  (:func:`local_step`, :func:`allreduce_next`, :func:`now`) library code calls; they do
  nothing outside a simulated node.

The model and its formulas: docs/simulation.md.
"""

from __future__ import annotations

from .clock import NetworkClock, allreduce_next, local_step, now
from .spec import NetworkSpec, parse_network

__all__ = ["NetworkClock", "NetworkSpec", "allreduce_next", "local_step", "now",
           "parse_network"]

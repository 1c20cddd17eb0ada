"""The simulated clock of an in-process network (docs/simulation.md).

A :class:`NetworkClock` keeps one :class:`~choco.sim.model.NodeTimes` per node and advances
it at the events the node's program produces, never with the host's time (unless the spec
says ``compute=measured``):

* a local step (:func:`local_step`, called by ``ChocoSGD.step``, ``AllReduceSGD.step`` and
  every round of the consensus program): ``cpu += compute · factor_i · J``, ``J = e^{σ z}``
  with ``z`` a standard normal drawn from the node's own seeded stream (``jitter=σ``);
* posting a neighbourhood exchange of ``m`` bytes: :func:`~choco.sim.model.post` with the
  per-link times ``α_ij + 8 m / β_ij``; the arrival times travel with the message;
* waiting for it: :func:`~choco.sim.model.receive_each` (decode each message as soon as
  it has arrived, in neighbour order: ``ChocoGossip.finish``) or
  :func:`~choco.sim.model.receive` (decode after the whole exchange: gossips that call
  ``NeighbourRound.wait``), with the arrival times of the neighbours' messages;
* the gradient all-reduce of the all-reduce baseline (:func:`allreduce_next` marks the
  next collective): every node waits for the last, then the ring all-reduce time
  (:func:`~choco.sim.model.allreduce_time`) passes for everyone.

Other collectives (metrics, agreement checks, the divergence check) are instrumentation and
cost no simulated time. The clock is bound to the thread running a node by
:meth:`choco.comm.LocalNetwork.run`; the hooks below do nothing in other threads, so library
code calls them unconditionally.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import numpy as np

from .model import Link, NodeTimes, allreduce_time, post, receive, receive_each
from .spec import NetworkSpec, parse_network

__all__ = ["NetworkClock", "allreduce_next", "bind", "current", "local_step", "now"]


class NetworkClock:
    """Simulated time of every node of one in-process network.

    Parameters
    ----------
    spec
        The network model (:func:`~choco.sim.spec.parse_network` accepts a string).
    neighbors
        Every node's sorted neighbour list; messages leave in this order.
    """

    def __init__(self, spec: NetworkSpec | str, neighbors: Sequence[Sequence[int]]) -> None:
        self.spec = parse_network(spec)
        self.neighbors = [list(nb) for nb in neighbors]
        self.spec.check_graph(self.neighbors)
        self.size = n = len(self.neighbors)
        self.times = [NodeTimes() for _ in range(n)]
        self.factors = [self.spec.factor(i) for i in range(n)]
        # per node, per neighbour: (α seconds, β bytes/s)
        self._links = [[self._link(i, j) for j in nb] for i, nb in enumerate(self.neighbors)]
        self._jitter = [np.random.Generator(np.random.PCG64([self.spec.seed, i]))
                        for i in range(n)] if self.spec.jitter > 0 else None
        self._mark = [0.0] * n
        self._allreduce: dict[int, float] = {}
        #: local steps charged per node
        self.steps = [0] * n

    def _link(self, i: int, j: int) -> tuple[float, float]:
        bandwidth, latency = self.spec.link(i, j)
        return latency, bandwidth / 8

    @property
    def measured(self) -> bool:
        return self.spec.measured

    # -- host time (compute=measured) ---------------------------------------------------
    def resume(self, i: int) -> None:
        """Node ``i`` runs again from now (after a communication call returned)."""
        if self.spec.measured:
            self._mark[i] = time.perf_counter()

    def charge(self, i: int) -> None:
        """Add node ``i``'s host time since :meth:`resume` to its CPU (measured only)."""
        if self.spec.measured:
            t = time.perf_counter()
            self.times[i].cpu += (t - self._mark[i]) * self.factors[i]
            self._mark[i] = t

    # -- events -------------------------------------------------------------------------
    def local_step(self, i: int) -> None:
        """One local step of node ``i`` (forward, backward, update)."""
        self.steps[i] += 1
        if self.spec.compute is None:
            self.charge(i)
            return
        dt = self.spec.compute * self.factors[i]
        if self._jitter is not None:
            dt *= math.exp(self.spec.jitter * float(self._jitter[i].standard_normal()))
        self.times[i].cpu += dt

    def post(self, i: int, nbytes: int, to: Sequence[int] | None = None) -> list[float]:
        """Node ``i`` sends ``nbytes`` to each neighbour (or to the neighbours ``to``, in
        that order); their arrival times, in order."""
        self.charge(i)
        links = (self._links[i] if to is None
                 else [self._links[i][self.neighbors[i].index(j)] for j in to])
        wire = [alpha + nbytes / beta for alpha, beta in links]
        return post(self.times[i], self.spec.encode * self.factors[i], wire)

    def receive(self, i: int, arrivals: Sequence[float], each: bool = False) -> None:
        """Node ``i`` waits for messages arriving at ``arrivals`` and decodes them: after the
        whole exchange (:func:`~choco.sim.model.receive`), or with ``each`` one by one as
        they arrive, in order (:func:`~choco.sim.model.receive_each`)."""
        self.charge(i)
        rule = receive_each if each else receive
        rule(self.times[i], arrivals, self.spec.decode * self.factors[i])

    def allreduce_next(self, i: int, nbytes: float) -> None:
        """Node ``i``'s next collective is an all-reduce of ``nbytes`` that costs time."""
        self.charge(i)
        self._allreduce[i] = nbytes

    def collective_done(self) -> None:
        """Every node has entered the collective: a marked all-reduce synchronises them."""
        if not self._allreduce:
            return
        nbytes = max(self._allreduce.values())
        self._allreduce.clear()
        link = Link(self.spec.latency, self.spec.bandwidth / 8)
        end = max(t.now for t in self.times) + allreduce_time(self.size, nbytes, link)
        for t in self.times:
            t.cpu = t.nic = end

    def now(self, i: int) -> float:
        """Simulated seconds at which node ``i`` has finished all it started."""
        return self.times[i].now

    def finished(self) -> float:
        """Simulated seconds at which the last node has finished."""
        return max((t.now for t in self.times), default=0.0)

    def state(self, i: int) -> dict:
        """Node ``i``'s clock, for a checkpoint."""
        out: dict = {"cpu": self.times[i].cpu, "nic": self.times[i].nic,
                     "steps": self.steps[i]}
        if self._jitter is not None:
            out["jitter"] = self._jitter[i].bit_generator.state
        return out

    def load_state(self, i: int, state: dict) -> None:
        """Restore :meth:`state` for node ``i``."""
        self.times[i] = NodeTimes(float(state["cpu"]), float(state["nic"]))
        self.steps[i] = int(state["steps"])
        if self._jitter is not None and "jitter" in state:
            self._jitter[i].bit_generator.state = state["jitter"]


# -- the node running in this thread --------------------------------------------------------
_local = threading.local()


def bind(clock: NetworkClock | None, rank: int) -> None:
    """Make ``clock``'s node ``rank`` the one this thread runs (``None``: unbind)."""
    _local.node = None if clock is None else (clock, rank)


def current() -> tuple[NetworkClock, int] | None:
    """``(clock, rank)`` of the node this thread runs, if it runs one under a clock."""
    return getattr(_local, "node", None)


def local_step() -> None:
    """Mark the end of one local step of the node this thread runs (no-op without a clock)."""
    node = current()
    if node is not None:
        node[0].local_step(node[1])


def allreduce_next(nbytes: float) -> None:
    """The next collective of this thread's node is the algorithm's all-reduce of ``nbytes``
    (the all-reduce baseline): it synchronises the clocks and costs the ring time."""
    node = current()
    if node is not None:
        node[0].allreduce_next(node[1], nbytes)


def now() -> float | None:
    """Simulated seconds of this thread's node (``None`` without a clock)."""
    node = current()
    return None if node is None else node[0].now(node[1])

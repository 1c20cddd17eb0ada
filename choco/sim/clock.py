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
import weakref
from collections.abc import Sequence

import numpy as np

from ..errors import CommError
from .model import Link, NodeTimes, allreduce_time, post, receive, receive_each
from .spec import NetworkSpec, parse_network

__all__ = ["LockstepClock", "NetworkClock", "allreduce_next", "bind", "current", "local_step",
           "lockstep_round", "now"]


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


# -- every node in one thread ---------------------------------------------------------------
def lockstep_round(clock: NetworkClock, nbytes: Sequence[int], each: bool = False) -> None:
    """One round of every node when one thread drives them all (no thread is bound).

    Node ``i``'s events are those its own thread would produce in a round of the consensus
    program: a local step, the post of its ``nbytes[i]``-byte message to every neighbour,
    then the wait for its neighbours' messages, whose arrival times are the ones their
    posts returned (``each``: decoded one by one as they arrive, as ``ChocoGossip.finish``
    does, :meth:`NetworkClock.receive`). A node's clock changes only at its own events and
    the arrival times it receives, so every node ends the round with the times of the
    threaded run. A ``compute=measured`` clock charges the host time of the node's own
    thread, which has no meaning here: it is refused.
    """
    if clock.measured:
        raise CommError("lockstep_round needs a modelled compute time, not compute=measured; "
                        "run one thread per node (LocalNetwork.run) to measure it.")
    if len(nbytes) != clock.size:
        raise CommError(f"lockstep_round needs one message length per node ({clock.size}), "
                        f"got {len(nbytes)}; pass one length per node.")
    step, post, receive = clock.local_step, clock.post, clock.receive
    arrivals = []
    for i in range(clock.size):
        step(i)
        arrivals.append(post(i, nbytes[i]))
    for i, (nb, slot) in enumerate(zip(clock.neighbors, _slots(clock), strict=True)):
        receive(i, [arrivals[j][k] for j, k in zip(nb, slot, strict=True)], each)


def _slots(clock: NetworkClock) -> list[list[int]]:
    """``slot[i][m]``: the position of ``i`` in the neighbour list of its ``m``-th neighbour
    (where ``i`` finds its arrival time in that neighbour's post), computed once per clock."""
    cached = _SLOTS.get(clock)
    if cached is None:
        cached = _SLOTS[clock] = [[clock.neighbors[j].index(i) for j in nb]
                                  for i, nb in enumerate(clock.neighbors)]
    return cached


_SLOTS: weakref.WeakKeyDictionary[NetworkClock, list[list[int]]] = weakref.WeakKeyDictionary()


class LockstepClock:
    """:func:`lockstep_round` for every node at once, with numpy: the same times, bit for bit.

    Each of the round's operations is the one :meth:`NetworkClock.local_step`,
    :func:`~choco.sim.model.post` and :func:`~choco.sim.model.receive_each` (or
    :func:`~choco.sim.model.receive`) do for one node, done elementwise over the nodes (the
    same IEEE operations in the same order: a message's arrival is the running sum
    ``s_k = s_{k−1} + (α + m/β)`` neighbour by neighbour, the decodes
    ``c_k = max(c_{k−1}, a_k) + decode · f`` in neighbour order); the jitter draws stay one
    per node from the node's own stream, with :func:`math.exp`. The clock's
    :class:`NodeTimes` are read before and written after every round, so the clock's other
    methods see the same state.
    tests/test_sim_clock.py checks it against :func:`lockstep_round` (which calls the
    clock's methods) on graphs of every degree, stragglers, jitter and per-link files.
    """

    def __init__(self, clock: NetworkClock) -> None:
        if clock.measured:
            raise CommError("LockstepClock needs a modelled compute time, not "
                            "compute=measured; run one thread per node (LocalNetwork.run).")
        self.clock = clock
        n = clock.size
        width = max((len(nb) for nb in clock.neighbors), default=0)
        self.degree = np.array([len(nb) for nb in clock.neighbors], dtype=np.float64)
        self.factors = np.array(clock.factors, dtype=np.float64)
        # per node and neighbour slot: α, β (padding: 0 s and 1/β = 0, so it adds 0.0)
        self.alpha = np.zeros((n, width))
        self.beta = np.full((n, width), np.inf)
        # where node i finds the arrival of its m-th neighbour's message: (sender, slot)
        self.source = np.zeros((n, width), dtype=np.intp)
        self.slot = np.zeros((n, width), dtype=np.intp)
        self.present = np.zeros((n, width), dtype=bool)
        for i, (links, nb, slot) in enumerate(zip(clock._links, clock.neighbors,
                                                  _slots(clock), strict=True)):
            for k, (alpha, beta) in enumerate(links):
                self.alpha[i, k], self.beta[i, k] = alpha, beta
            self.source[i, : len(nb)], self.slot[i, : len(nb)] = nb, slot
            self.present[i, : len(nb)] = True

    def round(self, nbytes: Sequence[int] | np.ndarray, each: bool = False) -> None:
        """One round of every node: local step, post of ``nbytes[i]`` bytes, wait (and with
        ``each`` decode each message as it arrives, :func:`~choco.sim.model.receive_each`;
        else after the whole exchange, :func:`~choco.sim.model.receive`)."""
        clock, n = self.clock, self.clock.size
        spec = clock.spec
        times = clock.times
        cpu = np.fromiter((t.cpu for t in times), np.float64, n)
        nic = np.fromiter((t.nic for t in times), np.float64, n)
        # local step: cpu += compute · f_i (· e^{σ z_i})
        dt = (spec.compute or 0.0) * self.factors
        if clock._jitter is not None:
            dt *= np.array([math.exp(spec.jitter * float(g.standard_normal()))
                            for g in clock._jitter])
        cpu += dt
        for i in range(n):
            clock.steps[i] += 1
        # post: cpu += encode · f_i; the messages leave one after another
        cpu += spec.encode * self.factors
        start = np.maximum(cpu, nic)
        wire = self.alpha + np.asarray(nbytes, dtype=np.float64)[:, None] / self.beta
        arrivals = np.empty_like(wire)
        for k in range(wire.shape[1]):
            start = start + wire[:, k]
            arrivals[:, k] = start
        nic = start
        received = np.where(self.present, arrivals[self.source, self.slot], -np.inf)
        decode = spec.decode * self.factors
        if each:  # c_k = max(c_{k−1}, a_k) + decode in neighbour order, then the own sends
            for k in range(received.shape[1]):
                cpu = np.where(self.present[:, k],
                               np.maximum(cpu, received[:, k]) + decode, cpu)
            cpu = np.maximum(cpu, nic)
        else:  # every neighbour's message and the own sends, then decode each
            last = np.maximum(cpu, nic)
            if received.shape[1]:
                last = np.maximum(last, received.max(axis=1))
            cpu = last + self.degree * decode
        for t, c, w in zip(times, cpu.tolist(), nic.tolist(), strict=True):
            t.cpu, t.nic = c, w

    def now(self) -> list[float]:
        """Every node's simulated time (:meth:`NetworkClock.now`), in rank order."""
        return [t.now for t in self.clock.times]

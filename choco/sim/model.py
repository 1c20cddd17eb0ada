"""The α–β network model shared by the simulated clock and ``python -m choco.bench whatif``.

One node has one CPU and one network interface (NIC). Its CPU does the local step, the
encode of its message and the decode of its neighbours' messages, one after another; its
NIC sends its messages, one after another. A message of ``m`` bytes from ``i`` to ``j``
occupies the sender's NIC for

    t_ij(m) = α_ij + 8 m / β_ij                    (α: latency, s; β: bandwidth, bit/s)

and arrives when that time is over; receiving is free (the other direction of a full-duplex
link). A round of node ``i`` (:class:`NodeTimes`, :func:`post`, :func:`receive`):

    post:     cpu ← cpu + encode;  s_0 = max(cpu, nic)
              arrival at the k-th neighbour j_k:  s_k = s_{k−1} + t_{i j_k}(m);  nic ← s_deg
    receive (decode as they arrive, ChocoGossip):
              c_0 = cpu;  c_k = max(c_{k−1}, a_k) + decode  (k in neighbour order)
              cpu ← max(c_deg, nic)
    receive (whole exchange first, the baselines):
              cpu ← max(cpu, nic, max_k a_k) + deg · decode

``ChocoGossip.finish`` decodes neighbour ``k``'s message as soon as it has arrived while
later ones are still in flight, in the fixed neighbour order (:func:`receive_each`), and
then waits for its own sends; a gossip that calls ``NeighbourRound.wait`` waits for the
whole exchange, its own sends included, before decoding (:func:`receive`). What overlaps: a
node's CPU work with every transfer in flight, its own and its neighbours' (a neighbour
encodes or computes while this node's message is on the wire; a node decodes one message
while the next arrives), and, in the ``overlap`` order, the exchange of step ``t`` with the
local step ``t + 1``.

:func:`step_time` applies the same two functions to one node of a regular graph whose
neighbours are all equal to it, so ``bench whatif`` and the clock cannot disagree.

The ring all-reduce (reduce-scatter then all-gather, arXiv:cs/0306085 §2; Patarasuk &
Yuan 2009) of ``S`` bytes on ``n`` nodes: ``2 (n − 1) α + 2 (n − 1)/n · S / β`` after the
last node arrives (a global wait).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Link",
    "NodeTimes",
    "allreduce_time",
    "gossip_time",
    "message_time",
    "post",
    "receive",
    "receive_each",
    "step_time",
]


@dataclass(frozen=True)
class Link:
    """``alpha`` seconds per message, ``beta`` bytes/s, ``shared`` one link for all nodes."""

    alpha: float
    beta: float
    shared: bool = False


def message_time(nbytes: float, link: Link) -> float:
    """``α + m/β``: seconds one ``nbytes``-byte message occupies its sender's NIC."""
    return link.alpha + nbytes / link.beta


def allreduce_time(n: int, nbytes: float, link: Link) -> float:
    """Ring all-reduce of ``nbytes`` over ``n`` nodes (link time only).

    ``2 (n−1) α + 2 (n−1)/n · S/β``; with ``link.shared`` all ``n`` nodes' traffic crosses
    one link: ``2 (n−1) α + 2 (n−1) · S/β``.
    """
    if n <= 1:
        return 0.0
    stages = 2 * (n - 1)
    per_node = 2 * (n - 1) / n * nbytes
    if link.shared:
        return stages * link.alpha + n * per_node / link.beta
    return stages * link.alpha + per_node / link.beta


def gossip_time(n: int, degree: int, message: float, link: Link) -> float:
    """One gossip exchange: ``degree`` messages of ``message`` bytes per node (link time).

    One NIC per node: the messages leave one after another, ``degree · (α + m/β)``; with
    ``link.shared``: ``α + n · degree · m/β`` (every node's bytes on one link).
    """
    if link.shared:
        return link.alpha + n * degree * message / link.beta
    return degree * message_time(message, link)


@dataclass
class NodeTimes:
    """One node's simulated clock: when its CPU and its NIC are next free (seconds)."""

    cpu: float = 0.0
    nic: float = 0.0

    @property
    def now(self) -> float:
        """When the node has finished everything it started (CPU and sends)."""
        return max(self.cpu, self.nic)


def post(t: NodeTimes, encode: float, wire: Sequence[float]) -> list[float]:
    """Encode on the CPU, then send one message per neighbour, one after another.

    ``wire[k]``: seconds the message to the ``k``-th neighbour occupies the NIC
    (:func:`message_time`). Returns the arrival time at each neighbour, in order.
    """
    t.cpu += encode
    start = max(t.cpu, t.nic)
    arrivals = []
    for w in wire:
        start += w
        arrivals.append(start)
    t.nic = start
    return arrivals


def receive(t: NodeTimes, arrivals: Sequence[float], decode: float) -> None:
    """Wait for every neighbour's message and for the own sends, then decode each
    (a gossip that waits for the whole exchange: ``NeighbourRound.wait``)::

        cpu ← max(cpu, nic, max_k a_k) + deg · decode
    """
    t.cpu = max(t.cpu, t.nic, *arrivals) + len(arrivals) * decode


def receive_each(t: NodeTimes, arrivals: Sequence[float], decode: float) -> None:
    """Decode each neighbour's message as soon as it has arrived, in neighbour order, then
    wait for the own sends (``ChocoGossip.finish``: ``Exchange.wait_each``)::

        c_0 = cpu;   c_k = max(c_{k−1}, a_k) + decode   (k = 1 … deg);   cpu ← max(c_deg, nic)

    ``a_k``: arrival of the ``k``-th neighbour's message. Decode ``k`` starts when message
    ``k`` has arrived and decode ``k − 1`` is over, so a message that arrives while an
    earlier one is decoded costs no waiting; with ``decode = 0`` this is :func:`receive`.
    """
    c = t.cpu
    for a in arrivals:
        c = max(c, a) + decode
    t.cpu = max(c, t.nic)


def step_time(compute: float, codec: float, comm: float, order: str) -> float:
    """Per-step time of a node of a regular graph whose neighbours are all equal to it.

    ``compute``: local step; ``codec``: CPU time of encode and decode (charged as encode);
    ``comm``: link time of the round (:func:`gossip_time`). A neighbour equal to this node
    posts at the same time, so its message arrives when this node's own last message does.
    Steady state of :func:`post` / :func:`receive`:

    * ``sync`` (local step, then the whole exchange): ``compute + codec + comm``;
    * ``overlap`` (the exchange of step ``t`` runs during step ``t + 1``):
      ``codec + max(compute, comm)``.
    """
    t = NodeTimes()
    posted: list[float] = []
    arrivals: list[float] = []
    for _ in range(3):  # the third round is in steady state
        t.cpu += compute
        if order == "sync":
            arrivals = post(t, codec, [comm])
            posted.append(t.cpu)
            receive(t, arrivals, 0.0)
        else:
            if arrivals:
                receive(t, arrivals, 0.0)
            arrivals = post(t, codec, [comm])
            posted.append(t.cpu)
    return posted[-1] - posted[-2]

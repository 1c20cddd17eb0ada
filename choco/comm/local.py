"""A deterministic in-process network of ``n`` nodes running the same per-node code.

Two ways to drive it:

* **Lock-step, one thread** (tests, the γ tuner): call ``begin`` on every node, then
  ``finish`` on every node. An exchange whose neighbour has not posted yet raises instead
  of blocking, so it can never deadlock.
* **One thread per node, one at a time** (:meth:`LocalNetwork.run`): every node runs
  ``fn(comm)`` in its own thread, but only one thread runs at any moment. A node runs until
  it must wait (an exchange whose messages are not all posted, a collective the others have
  not reached) or returns; then the next ready node runs, in a fixed order (first ready,
  first run). The schedule depends only on the program, never on the host's load or timing,
  so a run gives the same result every time.

**Per-node process state.** At every hand-over the running node's random generators
(torch's CPU generator, numpy's legacy global ``np.random`` and Python's ``random``) are
saved and the next node's restored, so each node sees its own generators, as a separate
process would. They start seeded with the node's rank (a fresh process seeds them from the
OS, so they differ between processes too, but not reproducibly). The caller's generators are put
back when :meth:`~LocalNetwork.run` returns. CUDA generators are not switched.

**Simulated time.** ``LocalNetwork(..., network="bandwidth=1g,latency=50us,compute=20ms")``
adds a :class:`~choco.sim.NetworkClock` (docs/simulation.md): messages carry their simulated
arrival times, and :attr:`LocalNetwork.clock` gives every node's simulated time.

Collectives combine contributions in rank order, so results do not depend on the schedule.
The neighbour lists must be symmetric (checked at construction, naming the offending pairs),
and a message whose length differs from the receiver's own raises :class:`CommError` naming
the sender, as the MPI backend does. A node that raises stops the others (their waits raise
and the first error is re-raised in the caller); a run in which every unfinished node waits
for something no node can provide stops with a :class:`CommError` saying who waits for what.
A Ctrl-C in the caller stops every node at its next wait (waiting at most
:data:`INTERRUPT_GRACE_S` for them) before :meth:`LocalNetwork.run` re-raises it, so no node
thread still runs, or writes, once the caller handles it.
"""

from __future__ import annotations

import ctypes
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch

from ..sim import clock as simclock
from ..sim.clock import NetworkClock
from ..sim.spec import NetworkSpec
from .base import (
    SAME_LENGTH_FIX,
    CommError,
    Communicator,
    Exchange,
    check_neighbors,
    check_symmetric,
    rank_order_sum,
)
from .peers import check_sends

T = TypeVar("T")

#: seconds :meth:`LocalNetwork.run` waits for its nodes to stop after a Ctrl-C
INTERRUPT_GRACE_S = 10.0


#: numpy's legacy global generator (``np.random.rand`` & co.) and its raw MT19937 state
_NP_BITGEN = np.random.mtrand._rand._bit_generator
_NP_STATE = _NP_BITGEN.ctypes.state_address
_NP_SIZE = 624 * 4 + np.dtype(np.intc).itemsize  # uint32 key[624]; int pos


def _np_raw(state: tuple) -> bytes:
    """The raw MT19937 bytes of a ``np.random.get_state()`` tuple."""
    return (np.asarray(state[1], dtype=np.uint32).tobytes()
            + np.array([state[2]], dtype=np.intc).tobytes())


class _Generators:
    """The process-wide random generators of one node: torch (CPU), numpy legacy, random.

    numpy's state is moved as the raw bytes of its MT19937 (a 2.5 kB copy) rather than
    through ``get_state``/``set_state`` (tens of µs each); the cached second normal of the
    legacy ``randn`` (``has_gauss``, ``gauss``) goes through ``set_state`` only when it
    differs from the one loaded.
    """

    __slots__ = ("gauss", "np", "py", "torch")

    def __init__(self, torch_state: torch.Tensor, np_raw: bytes, gauss: tuple[int, float],
                 py_state: Any) -> None:
        self.torch, self.np, self.gauss, self.py = torch_state, np_raw, gauss, py_state

    @classmethod
    def fresh(cls, rank: int) -> _Generators:
        """What node ``rank`` starts with: every generator seeded with the rank."""
        np_state = cast(tuple, np.random.RandomState(rank).get_state(legacy=True))
        return cls(torch.Generator().manual_seed(rank).get_state(), _np_raw(np_state),
                   (int(np_state[3]), float(np_state[4])), random.Random(rank).getstate())

    @classmethod
    def save(cls, loaded: _Generators | None = None) -> _Generators:
        """The generators' current states. ``loaded``: what was restored when this node
        resumed; numpy's ``randn`` cache is read (slowly) only if numpy drew since."""
        raw = ctypes.string_at(_NP_STATE, _NP_SIZE)
        if loaded is not None and raw == loaded.np:
            gauss = loaded.gauss
        else:
            state = cast(tuple, np.random.get_state(legacy=True))
            gauss = (int(state[3]), float(state[4]))
        return cls(torch.get_rng_state(), raw, gauss, random.getstate())

    def restore(self, current: _Generators | None = None) -> None:
        """Load these states. ``current``: what is loaded now (to skip numpy's slow path)."""
        torch.set_rng_state(self.torch)
        if current is not None and current.gauss == self.gauss:
            ctypes.memmove(_NP_STATE, self.np, _NP_SIZE)
        else:
            key = np.frombuffer(self.np[:624 * 4], dtype=np.uint32)
            pos = int(np.frombuffer(self.np[624 * 4:], dtype=np.intc)[0])
            np.random.set_state(("MT19937", key, pos, *self.gauss))
        random.setstate(self.py)


class LocalNetwork:
    """``n`` nodes with the given neighbour lists, exchanging through shared mailboxes.

    Parameters
    ----------
    neighbors
        Node ``i``'s neighbour list (symmetric).
    timeout
        Seconds a node may wait for its turn before the run stops with an error (``None``:
        no limit). Deadlocks are detected exactly, without waiting.
    network
        A network model (``--network`` SPEC string or :class:`~choco.sim.NetworkSpec`):
        adds a simulated clock, :attr:`clock`.
    """

    def __init__(self, neighbors: Sequence[Sequence[int]], timeout: float | None = None,
                 network: str | NetworkSpec | None = None) -> None:
        self.size = len(neighbors)
        self.neighbors = [check_neighbors(i, self.size, nb) for i, nb in enumerate(neighbors)]
        check_symmetric(self.neighbors)
        self.timeout = timeout
        #: the simulated clock (``None`` without ``network``)
        self.clock: NetworkClock | None = (None if network is None
                                           else NetworkClock(network, self.neighbors))
        # (sender, round) -> [buffer, receivers that have not collected it, arrival times];
        # a peer exchange's entries are keyed (sender, receiver, round), with count 1
        self._mail: dict[tuple[int, ...], list] = {}
        self.threaded = False
        self.comms = [LocalCommunicator(self, i) for i in range(self.size)]
        self._reset_schedule()

    @classmethod
    def from_matrix(cls, W: np.ndarray, network: str | NetworkSpec | None = None,
                    ) -> LocalNetwork:
        """Neighbours from the off-diagonal support of a mixing matrix."""
        n = W.shape[0]
        return cls([[j for j in range(n) if j != i and W[i, j] != 0] for i in range(n)],
                   network=network)

    # -- the schedule ---------------------------------------------------------------------
    def _reset_schedule(self) -> None:
        n = self.size
        self._turn = [threading.Lock() for _ in range(n)]
        for lock in self._turn:
            lock.acquire()
        self._ready: deque[int] = deque()
        self._waiting: dict[int, set[tuple[int, ...]]] = {}  # node -> missing mail keys
        self._blocked: dict[int, str] = {}  # node -> what it waits for
        self._done = [False] * n
        self._failure: str | None = None
        self._generators = [_Generators.fresh(i) for i in range(n)]
        self._loaded: _Generators | None = None  # whose states the generators hold
        self._slots: list[object] = [None] * n
        self._arrived = 0
        self._result: object = None
        self._in_collective: set[int] = set()

    def run(self, fn: Callable[[LocalCommunicator], T]) -> list[T]:
        """Run ``fn(comm)`` for every node, one at a time (module docstring); return the
        results in rank order. Each node has its own random generators."""
        results: dict[int, T] = {}  # rank -> fn's value
        errors: list[BaseException | None] = [None] * self.size
        self._reset_schedule()
        self._mail.clear()
        for comm in self.comms:
            comm._round = 0

        def target(i: int) -> None:
            self._acquire(i)
            try:
                if self._failure is None:
                    self._generators[i].restore(self._loaded)
                    self._loaded = self._generators[i]
                    simclock.bind(self.clock, i)
                    if self.clock is not None:
                        self.clock.resume(i)
                    results[i] = fn(self.comms[i])
            except BaseException as exc:  # re-raised in the caller below
                errors[i] = exc
                self._fail(f"node {i} failed")
            finally:
                self._loaded = None  # this node may have drawn: the next restore is full
                simclock.bind(None, i)
                self._done[i] = True
                self._hand_over(i)

        caller = _Generators.save()
        self._loaded = caller
        self.threaded = True
        threads = [threading.Thread(target=target, args=(i,), daemon=True)
                   for i in range(self.size)]
        try:
            for t in threads:
                t.start()
            self._ready.extend(range(self.size))
            if self._ready:
                self._turn[self._ready.popleft()].release()
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            # Ctrl-C in the caller: stop the nodes at their next wait before the caller
            # cleans up what they write (bounded: a node deep in a computation is left)
            if self._failure is None:
                self._failure = "the run was interrupted (Ctrl-C)"
            deadline = time.monotonic() + INTERRUPT_GRACE_S
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            raise
        finally:
            self.threaded = False
            caller.restore()
        first = next((e for e in errors if e is not None and not _secondary(e)), None)
        first = first or next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [results[i] for i in range(self.size)]

    def _acquire(self, i: int) -> None:
        if not self._turn[i].acquire(timeout=-1 if self.timeout is None else self.timeout):
            raise CommError(f"node {i} waited more than {self.timeout} s for its turn; pass "
                            "a larger timeout to LocalNetwork (or None).")

    def _hand_over(self, i: int) -> None:
        """Node ``i`` stops (it waits or it is done): let the next ready node run."""
        if not self._ready and not all(self._done):
            self._deadlock()
        if self._ready:
            self._turn[self._ready.popleft()].release()

    def _deadlock(self) -> None:
        waits = [f"node {j} waits for {what}" for j, what in sorted(self._blocked.items())]
        if not waits:
            return
        shown = "; ".join(waits[:4]) + (f" (and {len(waits) - 4} more)" if len(waits) > 4
                                          else "")
        self._fail(f"no node can run: {shown}; every node must post the same number of "
                   "exchanges and enter the same collectives")

    def _fail(self, why: str) -> None:
        """Stop the run: every waiting node resumes and raises."""
        if self._failure is None:
            self._failure = why
        blocked = sorted(self._blocked)
        self._blocked.clear()
        self._waiting.clear()
        self._in_collective.clear()
        self._ready.extend(j for j in blocked if j not in self._ready)

    def _block(self, i: int, what: str) -> None:
        """Node ``i`` waits (for ``what``) until another node makes it ready."""
        self._blocked[i] = what
        self._generators[i] = self._loaded = _Generators.save(self._generators[i])
        self._hand_over(i)
        self._acquire(i)
        self._generators[i].restore(self._loaded)
        self._loaded = self._generators[i]
        if self._failure is not None:
            if self._failure.startswith("no node can run") and what:
                raise CommError(self._failure)
            raise _PeerFailed(f"node {i}: stopped because {self._failure}")

    def _wake(self, j: int) -> None:
        self._blocked.pop(j, None)
        self._ready.append(j)

    # -- mailbox --------------------------------------------------------------------------
    def _post(self, sender: int, rnd: int, buf: torch.Tensor,
              arrivals: list[float] | None) -> None:
        nb = self.neighbors[sender]
        if not nb:
            return
        stamps = dict(zip(nb, arrivals, strict=True)) if arrivals is not None else None
        key = (sender, rnd)
        self._mail[key] = [buf, len(nb), stamps]
        for j in nb:
            self._delivered(j, key)

    def _post_to(self, sender: int, rnd: int, sends: dict[int, torch.Tensor],
                 arrivals: list[float] | None) -> None:
        """One round of a peer exchange: a mailbox entry per (sender, receiver, round)."""
        for k, (j, buf) in enumerate(sends.items()):
            key = (sender, j, rnd)
            self._mail[key] = [buf, 1, None if arrivals is None else {j: arrivals[k]}]
            self._delivered(j, key)

    def _delivered(self, receiver: int, key: tuple[int, ...]) -> None:
        wait = self._waiting.get(receiver)
        if wait is not None and key in wait:
            wait.discard(key)
            if not wait:
                del self._waiting[receiver]
                self._wake(receiver)

    def _collect(self, receiver: int, rnd: int, keys: list[tuple[int, ...]] | None = None,
                 ) -> tuple[list[torch.Tensor], list[float]]:
        if keys is None:
            keys = [(j, rnd) for j in self.neighbors[receiver]]
        missing = {k for k in keys if k not in self._mail}
        if missing:
            first = min(missing)
            if not self.threaded:
                raise CommError(
                    f"node {receiver}: neighbour {first[0]} has not posted exchange "
                    f"{rnd}; in lock-step use call begin on every node before finish."
                )
            self._waiting[receiver] = missing
            self._block(receiver, f"exchange {rnd} from node {first[0]}")
        out, stamps = [], []
        for k in keys:
            entry = self._mail[k]
            out.append(entry[0])
            if entry[2] is not None:
                stamps.append(entry[2][receiver])
            entry[1] -= 1
            if entry[1] == 0:
                del self._mail[k]
        return out, stamps

    def _collective(self, rank: int, value: object, combine: Callable[[list], Any],
                    copy: Callable[[Any], Any]) -> Any:
        if self.size == 1:
            if self.clock is not None:
                self.clock.collective_done()
            return combine([value])
        if not self.threaded:
            raise CommError(
                "blocking collectives on a LocalNetwork need one thread per node: run the "
                "per-node code through LocalNetwork.run(fn)."
            )
        self._slots[rank] = value
        self._arrived += 1
        if self._arrived < self.size:
            self._in_collective.add(rank)
            self._block(rank, "a collective")
            return copy(self._result)
        self._arrived = 0
        self._result = combine(list(self._slots))
        self._slots = [None] * self.size
        if self.clock is not None:
            self.clock.collective_done()
        for j in sorted(self._in_collective):
            self._wake(j)
        self._in_collective.clear()
        return copy(self._result)


class _PeerFailed(CommError):
    """Raised in nodes whose peer failed; the peer's own error is the one reported."""


def _secondary(exc: BaseException) -> bool:
    return isinstance(exc, _PeerFailed)


class _LocalExchange(Exchange):
    def __init__(self, net: LocalNetwork, rank: int, rnd: int, length: int,
                 keys: list[tuple[int, ...]] | None = None) -> None:
        self.net, self.rank, self.rnd, self.length = net, rank, rnd, length
        self.keys = keys  # a peer exchange's (sender, receiver, round) entries

    def wait(self) -> list[torch.Tensor]:
        return self._collect(each=False)

    def wait_each(self) -> Iterator[torch.Tensor]:
        """Every message is in the mailbox at once; the clock charges decoding each as it
        arrives, in neighbour order (:func:`choco.sim.model.receive_each`)."""
        yield from self._collect(each=True)

    def _collect(self, each: bool) -> list[torch.Tensor]:
        net, clock = self.net, self.net.clock
        if clock is not None:
            clock.charge(self.rank)
        received, stamps = net._collect(self.rank, self.rnd, self.keys)
        senders = net.neighbors[self.rank] if self.keys is None else [k[0] for k in self.keys]
        for j, buf in zip(senders, received, strict=True):
            if buf.numel() != self.length:  # MPI would truncate or leave stale bytes
                raise CommError(
                    f"rank {j} sent a {buf.numel()}-byte gossip message to rank {self.rank}, "
                    f"which sends {self.length}-byte messages; {SAME_LENGTH_FIX}."
                )
        if clock is not None and net.threaded:
            clock.receive(self.rank, stamps, each)
            clock.resume(self.rank)
        return received


def _copy_array(value: np.ndarray) -> np.ndarray:
    return np.array(value, copy=True)


class LocalCommunicator(Communicator):
    """Node ``rank`` of a :class:`LocalNetwork`."""

    def __init__(self, net: LocalNetwork, rank: int) -> None:
        self.net = net
        self.rank = rank
        self.size = net.size
        self.neighbors = net.neighbors[rank]
        self._round = 0

    def neighbor_exchange(self, send: torch.Tensor) -> Exchange:
        rnd = self._round
        self._round += 1
        clock = self.net.clock
        arrivals = None
        if clock is not None and self.net.threaded:
            arrivals = clock.post(self.rank, send.numel())
            clock.resume(self.rank)
        # Receivers must see the bytes as sent, even if the sender reuses its buffer.
        self.net._post(self.rank, rnd, send.clone(), arrivals)
        return _LocalExchange(self.net, self.rank, rnd, send.numel())

    def peer_exchange(self, sends: Mapping[int, torch.Tensor], nbytes: int) -> Exchange:
        """This round's peers only (:mod:`choco.comm.peers`); copies what it posts. Under a
        simulated clock the messages leave one after another, in ascending peer order."""
        peers = check_sends(self.rank, self.neighbors, sends, nbytes)
        rnd = self._round
        self._round += 1
        clock = self.net.clock
        arrivals = None
        if clock is not None and self.net.threaded:
            arrivals = clock.post(self.rank, nbytes, peers)
            clock.resume(self.rank)
        self.net._post_to(self.rank, rnd, {j: sends[j].clone() for j in peers}, arrivals)
        return _LocalExchange(self.net, self.rank, rnd, nbytes,
                              [(j, self.rank, rnd) for j in peers])

    def _collective(self, value: object, combine: Callable[[list], Any],
                    copy: Callable[[Any], Any]) -> Any:
        clock = self.net.clock
        if clock is not None:
            clock.charge(self.rank)
        result = self.net._collective(self.rank, value, combine, copy)
        if clock is not None:
            clock.resume(self.rank)
        return result

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        return self._collective(np.asarray(array), rank_order_sum, _copy_array)

    def allgather_object(self, obj: object) -> list:
        return self._collective(obj, list, list)

    def allgather(self, array: np.ndarray) -> np.ndarray:
        return self._collective(np.asarray(array), np.stack, _copy_array)

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` on every rank: one copy per node (not the gathered
        ``n × size`` stack the generic version copies to every node)."""
        return self._collective(np.asarray(array), lambda parts: parts[root], _copy_array)

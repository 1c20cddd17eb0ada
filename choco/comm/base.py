"""The communicator interface shared by the in-process and the MPI backends.

A communicator knows its rank, the network size and its neighbours in the gossip graph
(symmetric: in- and out-neighbours are the same sorted list). Its one hot-path operation is
a *non-blocking neighbourhood exchange* of equal-size byte buffers: every node sends one
buffer to all its neighbours and receives one from each (point-to-point ``MPI_Isend`` /
``MPI_Irecv`` on a distributed-graph communicator), and can hand the received buffers over
one at a time, as they arrive (:meth:`Exchange.wait_each`). Small blocking collectives
serve metrics and set-up.

Every backend refuses, with an error naming the ranks rather than a hang or a silent
mis-decode, neighbour lists that are not mirrored (:func:`check_symmetric`) and neighbours
that post messages of different lengths (:func:`check_message_lengths`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import CommError


class Exchange(ABC):
    """A posted neighbourhood exchange; :meth:`wait` returns one buffer per neighbour, and
    :meth:`wait_each` hands them over one at a time, each as soon as it has arrived."""

    @abstractmethod
    def wait(self) -> list[torch.Tensor]:
        """Block until done; buffers are in :attr:`Communicator.neighbors` order."""

    def wait_each(self) -> Iterator[torch.Tensor]:
        """Yield the neighbours' buffers in :attr:`Communicator.neighbors` order, the
        ``k``-th as soon as it has arrived, while later ones may still be in flight; once
        the last is taken and the iterator is exhausted the exchange is complete (the own
        sends too), as after :meth:`wait`.

        Lets a receiver decode neighbour ``k``'s message while neighbour ``k + 1``'s is still
        on the wire, in a fixed order (so sums over the messages keep their order). The
        default waits for everything first (backends whose transfers cannot be waited for
        one by one, and the in-process network, where they are all there at once).
        """
        yield from self.wait()

    def progress(self) -> None:
        """Advance the exchange without blocking (a no-op where transfers progress on their
        own: threads, gloo's background threads)."""
        return None


class Communicator(ABC):
    """Rank, size, neighbours, one non-blocking neighbourhood exchange, small collectives."""

    rank: int
    size: int
    neighbors: list[int]

    @abstractmethod
    def neighbor_exchange(self, send: torch.Tensor) -> Exchange:
        """Post ``send`` (1-D CPU ``uint8``) to every neighbour and receive theirs.

        All neighbours must send buffers of the same length. The returned buffers are valid
        until the next exchange is posted (they may live in buffers allocated once).
        """

    def peer_exchange(self, sends: Mapping[int, torch.Tensor], nbytes: int) -> Exchange:
        """Post ``sends[j]`` to each of this round's peers ``j`` (a subset of
        :attr:`neighbors`) and receive one ``nbytes``-byte message from each; the buffers
        come back in the order of ``sends``. Every rank calls it once per round (with no
        peers when it idles); time-varying graphs only (:mod:`choco.comm.peers`)."""
        raise CommError(f"{type(self).__name__} cannot exchange with a subset of its "
                        "neighbours; use the in-process, MPI or torch.distributed backend.")

    @abstractmethod
    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over all ranks (a new array); blocking."""

    @abstractmethod
    def allgather(self, array: np.ndarray) -> np.ndarray:
        """Stack every rank's equal-shape ``array`` along a new axis 0, in rank order."""

    @abstractmethod
    def allgather_object(self, obj: object) -> list:
        """Every rank's (picklable, small) ``obj``, in rank order; never on the hot path."""

    def barrier(self) -> None:
        """Wait for every rank."""
        self.allreduce(np.zeros(1))

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` on every rank (same shape and dtype everywhere)."""
        return self.allgather(array)[root].copy()

    def close(self) -> None:
        """Release what the communicator holds beyond memory (collective where that is:
        MPI's graph communicator); nothing by default. Not used after."""
        return None


class ProcessCommunicator(Communicator):
    """What the communicators spanning processes (MPI, torch.distributed) share.

    Subclasses set ``all_neighbors`` (every rank's neighbour list, gathered and checked at
    construction) and ``_lengths_checked = False``, and implement ``allgather``.
    """

    all_neighbors: list[list[int]]
    _lengths_checked: bool

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Sum over ranks, added in rank order (:func:`rank_order_sum`): bit-identical to the
        in-process backend. It gathers every rank's array (memory ``size ×``), which suits
        the metrics and small reductions it serves."""
        return rank_order_sum(self.allgather(array))

    def _agree_on_neighbors(self, neighbors: Sequence[int],
                            gather: Callable[[object], list]) -> list[int]:
        """Check this rank's ``neighbors``, gather every rank's list (``gather``: an
        all-gather of a small object) and check the relation is symmetric; set
        :attr:`all_neighbors` and return this rank's checked list.

        A bad list is reported on every rank after the gather, never raised alone (the other
        ranks would wait in the gather, the graph creation or the first exchange).
        """
        problem: str | None = None
        try:
            mine = check_neighbors(self.rank, self.size, neighbors)
        except CommError as exc:
            mine, problem = [], str(exc)
        except (TypeError, ValueError) as exc:
            mine, problem = [], f"rank {self.rank}: a list of neighbour ranks is required ({exc})"
        gathered = gather((mine, problem))
        problems = [p for _, p in gathered if p is not None]
        if problems:
            more = len(problems) - 1
            raise CommError(problems[0] + (f" (and {more} more rank{'s' * (more > 1)})"
                                           if more else ""))
        self.all_neighbors = [list(nb) for nb, _ in gathered]
        check_symmetric(self.all_neighbors)  # the same verdict on every rank
        return mine

    def _check_lengths(self, length: int) -> None:
        """One all-gather of the message length, on the first exchange only.

        Not repeated when the length changes: a rank that changed alone would wait in this
        collective while its neighbours wait in the exchange.
        """
        self._lengths_checked = True
        if self.size == 1:
            return
        lengths = self.allgather(np.array([length], dtype=np.int64))[:, 0].tolist()
        check_message_lengths(lengths, self.all_neighbors)


def rank_order_sum(parts: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``parts[0] + parts[1] + ...`` added in rank order (a new array); ``parts`` is a list
    of arrays or one array whose first axis is the rank.

    Every backend reduces through this function, so a sum is bit-identical whichever
    launcher ran the job (MPI's own reduction order depends on the implementation).
    """
    out = np.array(parts[0], copy=True)
    for p in parts[1:]:
        out += p
    return out


def format_ranks(ranks: Sequence[int]) -> str:
    """``"rank 3"``, ``"ranks 0-1"``, ``"ranks 0-2, 5, 7-8"``: sorted ranks as runs."""
    values = sorted(set(int(r) for r in ranks))
    runs: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        runs.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ("rank " if len(values) == 1 else "ranks ") + ", ".join(runs)


def asymmetric_pairs(neighbor_lists: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``: rank ``i`` lists ``j`` as a neighbour but ``j`` does not list ``i``."""
    sets = [set(nb) for nb in neighbor_lists]
    return [(i, j) for i, nb in enumerate(neighbor_lists) for j in sorted(nb)
            if 0 <= j < len(sets) and i not in sets[j]]


def check_symmetric(neighbor_lists: Sequence[Sequence[int]]) -> None:
    """Raise :class:`CommError` naming the offending pairs unless every neighbour relation is
    mutual (``j`` in ``N(i)`` iff ``i`` in ``N(j)``).

    A rank that lists a neighbour which does not list it back would wait in the exchange
    for a message that never comes; every backend checks this before its first exchange.
    """
    pairs = asymmetric_pairs(neighbor_lists)
    if not pairs:
        return
    shown = "; ".join(f"rank {i} lists rank {j} as a neighbour but rank {j} does not list "
                      f"rank {i}" for i, j in pairs[:4])
    more = f" (and {len(pairs) - 4} more pairs)" if len(pairs) > 4 else ""
    raise CommError(
        f"the neighbour lists are not symmetric: {shown}{more}; every rank must build its "
        "list from the same (undirected) topology."
    )


def check_neighbors(rank: int, size: int, neighbors: Sequence[int]) -> list[int]:
    """Validate a neighbour list: sorted unique ranks in ``[0, size)`` without ``rank``."""
    out = sorted(int(j) for j in neighbors)
    if len(set(out)) != len(out) or any(j == rank or not 0 <= j < size for j in out):
        raise CommError(
            f"rank {rank}: neighbours must be distinct ranks in [0, {size}) other than "
            f"{rank}, got {list(neighbors)}; build them from the topology's graph."
        )
    return out


#: the fix named by every message-length error
SAME_LENGTH_FIX = ("every rank must run the same compressor on a model of the same size "
                   "(same compressor spec, per-tensor setting and parameter shapes)")


def check_message_lengths(lengths: Sequence[int],
                          neighbor_lists: Sequence[Sequence[int]]) -> None:
    """Raise :class:`CommError` unless neighbours post messages of the same length.

    ``lengths[i]`` is rank ``i``'s message length in bytes and ``neighbor_lists[i]`` its
    neighbours. The message names the first pair of neighbours that differ and the ranks
    grouped by length.
    """
    pairs = [(i, j) for i, nb in enumerate(neighbor_lists) for j in nb
             if i < j and lengths[i] != lengths[j]]
    if not pairs:
        return
    i, j = pairs[0]
    groups: dict[int, list[int]] = {}
    for r, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(r)
    summary = ", ".join(f"{n} bytes on {format_ranks(rs)}" for n, rs in groups.items())
    raise CommError(
        f"neighbours post gossip messages of different lengths: rank {i} sends {lengths[i]} "
        f"bytes but its neighbour rank {j} sends {lengths[j]} ({summary}); {SAME_LENGTH_FIX}."
    )

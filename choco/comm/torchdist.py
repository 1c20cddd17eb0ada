"""The ``torch.distributed`` communicator: gloo on CPU, NCCL on GPU.

:class:`TorchCommunicator` implements :class:`~choco.comm.Communicator` over an initialized
``torch.distributed`` process group, so the gossip, the baselines and
:func:`~choco.comm.check_agreement` run unchanged under ``torchrun``:

* the gossip exchange is one ``torch.distributed.batch_isend_irecv`` of non-blocking
  point-to-point operations (an ``irecv`` and an ``isend`` per neighbour) into receive
  buffers allocated once per message size and reused; no collective, nothing pickled;
* the reductions add in rank order (:func:`~choco.comm.base.rank_order_sum` over an
  all-gather of the raw bytes), and the gathers and the broadcast move raw bytes, so every
  result is bit-identical to the in-process and the MPI backends;
* the same start-up checks as :class:`~choco.comm.mpi.MPICommunicator`: every rank's
  neighbour list is gathered and checked (valid, symmetric) before any exchange, and the
  message lengths at the first exchange, raising :class:`~choco.errors.CommError` on
  **every** rank instead of leaving one waiting for a message that never comes.

With NCCL the messages travel between GPUs: the communicator's ``device`` is
``cuda:LOCAL_RANK``, each encoded (CPU) message is copied into a device send buffer and the
neighbours' messages are received into device buffers. :meth:`Exchange.wait` then copies
them into host buffers (allocated once, pinned) because the decoders read the message
header on the host; ``keep_on_device=True`` returns the device buffers instead.

The process group is the program's to create (``torch.distributed.init_process_group``);
the run layer's :func:`choco.run.launch.init_from_env` creates it from torchrun's variables
with a finite timeout, and :func:`choco.run.launch.run_torch` ends the whole job when one
rank fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .abort import abort_wanted, install_abort_hook
from .base import (
    CommError,
    Exchange,
    ProcessCommunicator,
)
from .peers import check_sends

__all__ = ["TorchCommunicator"]


def _default_place() -> tuple[int, int]:
    """``(rank, size)`` in the default process group; size 1 when there is none."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


# ---------------------------------------------------------------------------- communicator
class TorchCommunicator(ProcessCommunicator):
    """Rank ``dist.get_rank(group)`` of an initialized process group, with the given
    neighbours (symmetric graph).

    Construction is collective over ``group``: every rank must build its communicator at
    the same point. It gathers every rank's neighbour list (``all_gather_object``) and
    raises :class:`CommError` on every rank if one is invalid or the relation is not
    symmetric. An empty list on every rank is allowed: ``TorchCommunicator([])`` serves the
    blocking collectives only, e.g. the start-up :func:`~choco.comm.check_agreement`.

    Parameters
    ----------
    neighbors
        Ranks of ``group`` this rank exchanges with; must be symmetric across ranks.
    group
        The process group (the default group when ``None``); ranks are ranks *in* it.
    device
        Where messages travel: ``cpu`` for gloo (the default), ``cuda:LOCAL_RANK`` for
        NCCL (the default there: the current CUDA device, which this constructor makes
        ``device`` if it is not already, as NCCL's object collectives use it).
    keep_on_device
        With a CUDA ``device``, return the received messages as device tensors instead of
        copying them to host buffers (the decoders of ``choco.compress`` read the header
        on the host, so leave this off for them).
    abort_on_error
        End this process (``os._exit(1)`` after its traceback) when an exception escapes
        on it, so its peers' exchanges fail instead of waiting and torchrun stops the job
        (see :mod:`choco.comm.abort`). ``None`` (the default) means yes unless the
        environment sets ``CHOCO_NO_ABORT=1``.

    Attributes
    ----------
    all_neighbors
        Every rank's (sorted) neighbour list, in rank order, as gathered at construction.
    backend, device
        The group's backend (``"gloo"``, ``"nccl"``) and where messages travel.
    """

    def __init__(self, neighbors: Sequence[int], group: dist.ProcessGroup | None = None,
                 device: torch.device | str | None = None, *,
                 keep_on_device: bool = False, abort_on_error: bool | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise CommError(
                "TorchCommunicator needs an initialized torch.distributed process group, "
                "but none is; launch with torchrun (torchrun --standalone --nproc-per-node N "
                "script.py) and initialize the process group first (torch.distributed."
                "init_process_group, or choco.run.launch.init_from_env)."
            )
        if abort_wanted(abort_on_error):
            install_abort_hook(_default_place, os._exit, "os._exit, torchrun stops the rest")
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        if self.rank < 0:
            raise CommError("this process is not a member of the process group it was given; "
                            "build the communicator on the group's ranks only.")
        self.backend = str(dist.get_backend(group)).lower()
        self.device = _transport_device(self.backend, device)
        self.keep_on_device = bool(keep_on_device)
        self._global = [_global_rank(group, r) for r in range(self.size)]
        self.neighbors = self._agree_on_neighbors(neighbors, self.allgather_object)
        self._peers = [self._global[j] for j in self.neighbors]
        self._nbytes = -1
        self._recv = torch.empty((len(self.neighbors), 0), dtype=torch.uint8,
                                 device=self.device)
        self._host: torch.Tensor | None = None
        self._send_dev: torch.Tensor | None = None
        self._lengths_checked = False

    @classmethod
    def from_matrix(cls, W: np.ndarray, group: dist.ProcessGroup | None = None,
                    device: torch.device | str | None = None) -> TorchCommunicator:
        """Neighbours from the off-diagonal support of row ``rank`` of a mixing matrix."""
        rank = dist.get_rank(group)
        return cls([j for j in range(W.shape[0]) if j != rank and W[rank, j] != 0], group,
                   device)

    @property
    def _on_host(self) -> bool:
        return self.device.type == "cpu"

    # -- the gossip exchange ------------------------------------------------------------
    def neighbor_exchange(self, send: torch.Tensor) -> Exchange:
        """Post ``send`` (1-D ``uint8``) to every neighbour and receive theirs (every rank
        posts; point-to-point, so only neighbours wait for each other).

        The first exchange also gathers every rank's message length (one collective over
        the group) and raises :class:`CommError` on every rank if two neighbours differ.
        """
        if send.dtype != torch.uint8 or send.dim() != 1:
            raise CommError(f"rank {self.rank}: the gossip exchange sends a 1-D uint8 "
                            f"buffer, got dtype {send.dtype} shape {tuple(send.shape)}.")
        length = send.numel()
        if not self._lengths_checked:
            self._check_lengths(length)
        if length != self._nbytes:
            self._allocate(length)
        if not self.neighbors:
            return _Exchange([], None, self._recv, self._host_buffer())
        if self._on_host:
            payload = send.contiguous() if send.device.type == "cpu" else send.cpu()
        else:
            if self._send_dev is None:
                raise CommError(f"rank {self.rank}: the device send buffer was not allocated "
                                "before the exchange; exchanges must go through "
                                "neighbor_exchange.")
            self._send_dev.copy_(send)
            payload = self._send_dev
        ops = [dist.P2POp(dist.irecv, self._recv[i], peer, self.group)
               for i, peer in enumerate(self._peers)]
        ops += [dist.P2POp(dist.isend, payload, peer, self.group) for peer in self._peers]
        works = dist.batch_isend_irecv(ops)
        return _Exchange(list(works or []), payload, self._recv, self._host_buffer())

    def peer_exchange(self, sends: Mapping[int, torch.Tensor], nbytes: int) -> Exchange:
        """This round's peers only: one ``batch_isend_irecv`` with them (none when idle;
        :mod:`choco.comm.peers`); the first call checks the lengths."""
        peers = check_sends(self.rank, self.neighbors, sends, nbytes)
        if not self._lengths_checked:
            self._check_lengths(nbytes)
        if nbytes != self._nbytes:
            self._allocate(nbytes)
        if not peers:
            return _Exchange([], None, self._recv[:0], None)
        payloads = [sends[j].to(self.device) for j in peers]
        ops = [dist.P2POp(dist.irecv, self._recv[k], self._global[j], self.group)
               for k, j in enumerate(peers)]
        ops += [dist.P2POp(dist.isend, buf, self._global[j], self.group)
                for j, buf in zip(peers, payloads, strict=True)]
        works = dist.batch_isend_irecv(ops)
        host = self._host_buffer()
        return _Exchange(list(works or []), payloads,  # type: ignore[arg-type]
                         self._recv[:len(peers)], None if host is None else host[:len(peers)])

    def _allocate(self, length: int) -> None:
        """Receive (and, on a GPU, send and host) buffers for ``length``-byte messages."""
        k = len(self.neighbors)
        self._nbytes = length
        self._recv = torch.empty((k, length), dtype=torch.uint8, device=self.device)
        if not self._on_host:
            self._send_dev = torch.empty(length, dtype=torch.uint8, device=self.device)
            if not self.keep_on_device:
                self._host = torch.empty((k, length), dtype=torch.uint8,
                                         pin_memory=torch.cuda.is_available())

    def _host_buffer(self) -> torch.Tensor | None:
        return None if self._on_host or self.keep_on_device else self._host


    # -- blocking collectives -----------------------------------------------------------

    def allgather(self, array: np.ndarray) -> np.ndarray:
        """Every rank's equal-shape ``array`` stacked in rank order (raw bytes: exact)."""
        arr = _contiguous(array)
        out = np.empty((self.size, *arr.shape), dtype=arr.dtype)
        if arr.nbytes == 0:
            return out
        mine = _bytes_of(arr)
        gathered = torch.empty((self.size, mine.numel()), dtype=torch.uint8, device=self.device)
        dist.all_gather(list(gathered.unbind(0)), mine.to(self.device), group=self.group)
        _bytes_of(out).copy_(gathered.reshape(-1))  # synchronous device-to-host copy
        return out

    def allgather_object(self, obj: object) -> list:
        """Every rank's (picklable, small) ``obj`` in rank order; never on the hot path."""
        out: list = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        flag = torch.zeros(1, device=self.device)
        dist.all_reduce(flag, group=self.group)
        flag.cpu()  # waits for the reduction on a GPU too

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` (same shape and dtype everywhere), byte for byte."""
        arr = _contiguous(array).copy()
        if arr.nbytes == 0:
            return arr
        host = _bytes_of(arr)
        buf = host if self._on_host else host.to(self.device)
        dist.broadcast(buf, self._global[root], group=self.group)
        if buf is not host:
            host.copy_(buf)
        return arr


class _Exchange(Exchange):
    """A posted ``batch_isend_irecv``; ``wait`` returns the receive rows (host copies when
    ``host`` is given)."""

    def __init__(self, works: list, send: torch.Tensor | None, recv: torch.Tensor,
                 host: torch.Tensor | None) -> None:
        self.works = works
        self.send = send  # kept alive until the operations complete
        self.recv = recv
        self.host = host

    def wait(self) -> list[torch.Tensor]:
        works, self.works = self.works, []
        for work in works:
            work.wait()
        if self.host is None:
            return list(self.recv.unbind(0))
        if works:
            self.host.copy_(self.recv)  # synchronous: after it the bytes are on the host
        return list(self.host.unbind(0))

    def wait_each(self) -> Iterator[torch.Tensor]:
        """Neighbour ``k``'s buffer once its ``irecv`` is complete (gloo: one work per
        operation, the receives first); with a host copy (NCCL) or one coalesced work for
        all, after everything."""
        k = self.recv.shape[0]
        if self.host is not None or len(self.works) != 2 * k:
            yield from self.wait()
            return
        works, self.works = self.works, []
        for i in range(k):
            works[i].wait()
            yield self.recv[i]
        for work in works[k:]:
            work.wait()


def _contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` as a C-contiguous array of the same shape (0-d stays 0-d, unlike
    ``np.ascontiguousarray``), so results have the in-process backend's shapes."""
    arr = np.asarray(array)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def _bytes_of(arr: np.ndarray) -> torch.Tensor:
    """A contiguous array's bytes as a flat CPU ``uint8`` tensor (sharing its memory if
    it is writable, else of a copy)."""
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr.reshape(-1).view(np.uint8))


def _global_rank(group: dist.ProcessGroup | None, rank: int) -> int:
    if group is None or group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank)


def _transport_device(backend: str, device: torch.device | str | None) -> torch.device:
    """Where messages travel: CPU for gloo; a CUDA device (made current) for NCCL."""
    if device is None:
        device = "cuda" if backend == "nccl" else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if "nccl" not in backend:
            raise CommError(f"the {backend} backend exchanges CPU tensors, got device "
                            f"{str(dev)!r}; leave device unset (messages are CPU buffers) "
                            "or use the nccl backend for GPU-to-GPU messages.")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.current_device() != dev.index:
            torch.cuda.set_device(dev)  # NCCL's object collectives use the current device
        return dev
    if dev.type != "cpu" or backend == "nccl":
        raise CommError(f"the {backend} backend cannot move messages on device "
                        f"{str(dev)!r}; use device='cuda:LOCAL_RANK' with nccl, cpu with gloo.")
    return dev

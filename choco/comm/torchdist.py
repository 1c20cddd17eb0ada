"""The ``torch.distributed`` backend: torchrun launches, gloo on CPU, NCCL on GPU.

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

Start-up and shut-down (:func:`init_from_env`, :func:`launched_by_torchrun`,
:func:`run_torch`)::

    torchrun --standalone --nproc-per-node 8 my_script.py        # one machine, gloo

    # my_script.py
    from choco.comm.torchdist import init_from_env, run_torch
    def main() -> int:
        launch = init_from_env()                   # gloo on CPU; device="cuda" -> NCCL
        comm = launch.communicator(topology.neighbors(launch.rank))
        ...
        return 0
    sys.exit(run_torch(main))

The process group gets a finite timeout (:data:`DEFAULT_TIMEOUT_S`, 10 minutes): a rank
whose peer stopped answering raises after that time instead of hanging forever.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ChocoError, UsageError
from .base import (
    CommError,
    Exchange,
    ProcessCommunicator,
)
from .peers import check_sends

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TorchCommunicator",
    "TorchLaunch",
    "init_from_env",
    "launched_by_torchrun",
    "run_torch",
]

#: seconds any collective or exchange may wait for a peer before it raises (the process
#: group's timeout); long enough for rank 0 to evaluate a model while the others wait
DEFAULT_TIMEOUT_S = 600.0
#: exit status of a user error (:class:`~choco.errors.ChocoError`), as ``choco.run.cli``
USAGE_EXIT = 2
#: seconds a non-zero rank waits before it reports its error, so that an error raised on
#: every rank is shown once (by rank 0, whose exit makes torchrun end the others)
GRACE_SECONDS = 2.0
#: seconds a rank whose peer died waits for torchrun to end it before it says so itself
PEER_GRACE_SECONDS = 10.0
#: error texts of a torch.distributed operation that failed because another rank died
#: (gloo: "Connection closed by peer"; NCCL after an abort): that rank's error is the one
#: to show
PEER_FAILURE_TEXTS = ("closed by peer", "reset by peer", "communicator was aborted")

#: torchrun's per-worker variables (``TORCHELASTIC_RUN_ID`` is set by its agent alone)
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: variables an MPI launcher sets in every rank (mpiexec of MPICH / Open MPI, srun)
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")

DEVICES = ("cpu", "cuda", "auto")
BACKENDS = ("gloo", "nccl")


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

    Attributes
    ----------
    all_neighbors
        Every rank's (sorted) neighbour list, in rank order, as gathered at construction.
    backend, device
        The group's backend (``"gloo"``, ``"nccl"``) and where messages travel.
    """

    def __init__(self, neighbors: Sequence[int], group: dist.ProcessGroup | None = None,
                 device: torch.device | str | None = None, *,
                 keep_on_device: bool = False) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise CommError(
                "TorchCommunicator needs an initialized torch.distributed process group, "
                "but none is; launch with torchrun (torchrun --standalone --nproc-per-node N "
                "script.py) and call choco.comm.torchdist.init_from_env() first."
            )
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

    def check_sizes_agree(self, value: int, what: str) -> None:
        """Raise on every rank (never hang) if ``value`` differs between ranks."""
        values = self.allgather(np.array([value], dtype=np.int64))[:, 0]
        if len(set(values.tolist())) != 1:
            raise CommError(f"{what} differs between ranks: {values.tolist()}")


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


# ---------------------------------------------------------------------------- launching
def launched_by_torchrun() -> bool:
    """Whether torchrun (or ``python -m torch.distributed.run``) started this process.

    True if torchrun's agent variable ``TORCHELASTIC_RUN_ID`` is set (also when torchrun
    itself was started by ``srun`` on several nodes), or if ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` are all set while no MPI launcher's size variable (``PMI_SIZE``,
    ``OMPI_COMM_WORLD_SIZE``, ``PMIX_SIZE``) is.
    """
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return True
    if not all(os.environ.get(v, "").strip() for v in _TORCHRUN_VARS):
        return False
    return not any(os.environ.get(v) for v in _MPI_SIZE_VARS)


@dataclass(frozen=True)
class TorchLaunch:
    """This process's place in a torchrun job, after :func:`init_from_env`.

    Attributes
    ----------
    rank, size, local_rank
        Rank in the default group, the number of ranks, the rank on this machine.
    backend
        ``"gloo"`` or ``"nccl"``.
    device
        Where the model should live: ``cuda:LOCAL_RANK`` when CUDA was asked for, else cpu.
    comm_device
        Where messages travel: ``device`` with NCCL, cpu with gloo.
    timeout_s
        The process group's timeout (``None`` if the group was initialized elsewhere and
        torch does not tell it).
    """

    rank: int
    size: int
    local_rank: int
    backend: str
    device: torch.device
    comm_device: torch.device
    timeout_s: float | None

    def communicator(self, neighbors: Sequence[int] = (), **kwargs) -> TorchCommunicator:
        """A :class:`TorchCommunicator` of the default group (collective: every rank)."""
        return TorchCommunicator(neighbors, None, self.comm_device, **kwargs)


def init_from_env(backend: str | None = None, device: str | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> TorchLaunch:
    """Initialize the default process group from torchrun's environment (once).

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` for every worker; this reads them (``init_method="env://"``). If the
    default group is already initialized it is kept and described.

    Parameters
    ----------
    backend
        ``"gloo"``, ``"nccl"``, or ``None``/``"auto"``: NCCL when the device is CUDA, gloo
        otherwise.
    device
        ``"cpu"`` (default when ``None``), ``"cuda"`` (``cuda:LOCAL_RANK``, made the current
        device; an error if CUDA is not available or has fewer devices than local ranks), or
        ``"auto"`` (CUDA if available and the backend is not gloo, else cpu). ``gloo`` with
        ``"cuda"`` keeps the model on the GPU and sends the (host) messages through gloo.
    timeout_s
        The process group's timeout in seconds (:data:`DEFAULT_TIMEOUT_S`): a collective or
        exchange waiting longer for a peer raises instead of hanging.

    Raises
    ------
    UsageError
        For an unknown backend or device, a bad timeout, or NCCL without CUDA.
    CommError
        If the process was not started by torchrun (variables missing) or the process group
        cannot be initialized.
    """
    name = (backend or "auto").strip().lower()
    if name not in (*BACKENDS, "auto"):
        raise UsageError(f"the torch.distributed backend must be gloo, nccl or auto, got "
                         f"{backend!r}; gloo runs on CPU, nccl on CUDA GPUs.")
    kind = (device or "cpu").strip().lower()
    if kind not in DEVICES:
        raise UsageError(f"the device must be cpu, cuda or auto, got {device!r}.")
    try:
        timeout = float(timeout_s)
    except (TypeError, ValueError):
        timeout = float("nan")
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"the process-group timeout must be a positive number of seconds, "
                         f"got {timeout_s!r}; the default is {DEFAULT_TIMEOUT_S:g}.")
    cuda = torch.cuda.is_available()
    if kind == "auto":
        kind = "cuda" if cuda and name != "gloo" else "cpu"
    if name == "auto":
        name = "nccl" if kind == "cuda" else "gloo"
    if kind == "cuda" and not cuda:
        raise UsageError("device cuda was asked for but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use --device cpu (gloo) or a CUDA "
                         "build of torch on a machine with GPUs.")
    if name == "nccl" and (kind != "cuda" or not dist.is_nccl_available()):
        raise UsageError("the nccl backend needs CUDA devices and a torch build with NCCL; "
                         "use --device cuda on GPUs, or the gloo backend on CPU.")
    initialized = dist.is_available() and dist.is_initialized()
    if initialized:  # by this function earlier, or by the program itself
        rank, size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", 0)
    else:
        rank, size, local_rank = _torchrun_env()
    dev = torch.device("cpu")
    if kind == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UsageError(f"LOCAL_RANK {local_rank} needs a CUDA device but only {count} "
                             f"are visible on this machine; start at most {count} processes "
                             "per node (torchrun --nproc-per-node).")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    comm_dev = dev if name == "nccl" else torch.device("cpu")
    if initialized:
        have = str(dist.get_backend()).lower()
        if name not in have:
            raise CommError(f"the default process group already runs {have!r}, not "
                            f"{name!r}; initialize it once.")
        return TorchLaunch(rank, size, local_rank, name, dev, comm_dev,
                           _group_timeout(comm_dev))
    try:
        dist.init_process_group(backend=name, init_method="env://", rank=rank,
                                world_size=size, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as exc:
        raise CommError(
            f"rank {rank}: torch.distributed could not initialize the {name} process group "
            f"with {size} ranks at {os.environ.get('MASTER_ADDR')}:"
            f"{os.environ.get('MASTER_PORT')} ({exc}); launch every rank with the same "
            "torchrun command."
        ) from exc
    return TorchLaunch(rank, size, local_rank, name, dev, comm_dev, timeout)


def _group_timeout(device: torch.device) -> float | None:
    """The default group's timeout in seconds, if this torch version tells it."""
    try:
        backend = dist.distributed_c10d._get_default_group()._get_backend(device)
        return float(backend.options._timeout.total_seconds())
    except Exception:  # a private interface: unknown rather than wrong
        return None


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def _torchrun_env() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from the environment, checked."""
    missing = [v for v in (*_TORCHRUN_VARS[:2], "MASTER_ADDR", "MASTER_PORT")
               if not os.environ.get(v, "").strip()]
    if missing:
        raise CommError(
            f"the torch backend needs the variables torchrun sets, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; start the program with "
            "torchrun --standalone --nproc-per-node N (one machine) or torchrun --nnodes M "
            "--nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT (several)."
        )
    try:
        rank = int(os.environ["RANK"])
        size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    except ValueError as exc:
        raise CommError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc}).") \
            from exc
    if not (size >= 1 and 0 <= rank < size and local_rank >= 0):
        raise CommError(f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={size}, "
                        f"LOCAL_RANK={local_rank}.")
    return rank, size, local_rank


# ---------------------------------------------------------------------------- running
def _place() -> tuple[int, int]:
    """``(rank, size)``: from the default group if initialized, else torchrun's variables."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def _peer_failed(exc: BaseException | None) -> str | None:
    """The first line of ``exc`` (or of an exception it chains) if it is a torch.distributed
    error saying that another rank died mid-operation, else ``None``.

    Only errors of torch.distributed count (a ``DistError``, or a ``RuntimeError`` raised
    by gloo or NCCL): a "connection reset by peer" of the program's own download is its
    own error.
    """
    dist_error = getattr(dist, "DistError", ())
    for _ in range(8):
        if exc is None:
            break
        text = str(exc)
        lower = text.lower()
        from_dist = (isinstance(exc, dist_error) or (
            isinstance(exc, RuntimeError) and ("gloo" in lower or "nccl" in lower)))
        if from_dist and any(t in lower for t in PEER_FAILURE_TEXTS):
            line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            return line if len(line) <= 300 else line[:297] + "..."
        exc = exc.__cause__ or exc.__context__
    return None


def _finish() -> None:
    """Destroy the default process group (a clean exit; NCCL warns otherwise)."""
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # a peer already gone: nothing left to release cleanly
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def run_torch(main: Callable[[], int]) -> int:
    """Run ``main`` on every rank of a torchrun job; any exception ends the whole job.

    * ``main`` returns: the default process group is destroyed; with several ranks the
      process then ends with ``os._exit(code)`` after flushing stdout and stderr (skipping
      interpreter finalization, where gloo's threads can abort the process), with one rank
      the code is returned.
    * :class:`~choco.errors.ChocoError`: ``error: <message>`` on stderr, exit status 2.
      Rank 0 reports at once; another rank first waits :data:`GRACE_SECONDS`, so an error
      raised on every rank (a bad option, :func:`~choco.comm.check_agreement`) is shown
      once: rank 0's exit makes torchrun's agent end the other workers (SIGTERM) before
      they report.
    * any other exception: ``[rank r] Traceback ...``, exit status 1 (same grace).
    * an exception that only says another rank died (gloo "Connection closed by peer",
      NCCL abort): no traceback; the rank waits up to :data:`PEER_GRACE_SECONDS` for the
      agent to end it, then prints one line.

    A failing rank ends with ``os._exit(code)`` after flushing stdout and stderr, without
    running ``atexit`` handlers or destroying the process group (which could wait for
    operations that will never complete); its sockets close, so peers blocked in a
    collective or an exchange fail at once instead of waiting for the timeout. torchrun
    then stops the remaining workers and exits with status 1, naming the failed rank and
    its exit code. With one rank (``WORLD_SIZE`` 1 or unset, no process group of several
    ranks) the message is printed and the code returned, as ``choco.run.cli.run_local``
    does.
    """
    try:
        code = main()
    except ChocoError as exc:
        message, code, secondary = f"error: {exc}\n", USAGE_EXIT, None
    except SystemExit as exc:
        if exc.code in (0, None) or _place()[1] == 1:
            _finish()
            raise
        message, secondary = "", None
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        secondary = _peer_failed(exc)
        message, code = f"[rank {_place()[0]}] " + traceback.format_exc(), 1
    else:
        size = _place()[1]
        _finish()
        if size > 1:
            # end here rather than in interpreter finalization, where gloo's worker threads
            # were seen to abort the process ("terminate called without an active
            # exception", SIGABRT, about 1 run in 15 on this 2-core machine)
            _flush()
            os._exit(code)
        return code
    rank, size = _place()
    if size == 1:
        sys.stderr.write(message)
        _flush()
        _finish()
        return code
    if secondary is not None:
        _flush()
        time.sleep(PEER_GRACE_SECONDS)  # torchrun ends this worker meanwhile
        message = f"[rank {rank}] stopped: another rank failed ({secondary})\n"
    elif rank != 0:
        time.sleep(GRACE_SECONDS)
        if message and not message.startswith("[rank"):
            message = f"[rank {rank}] {message}"
    sys.stderr.write(message)
    _flush()
    os._exit(code)

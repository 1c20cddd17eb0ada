"""The world a distributed program runs on, and the torchrun process group.

A :class:`World` gives a program what it needs from either launcher: rank, size, a
communicator without neighbours for the start-up checks and small collectives, a factory for
the node's communicator, the library name for ``config.json`` and the library's own dense
all-reduce for the benchmarks' baseline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import CommError, UsageError
from .env import (
    DEVICES,
    MPI_LOCAL_RANK_VARS,
    TORCHRUN_ADDRESS_VARS,
    TORCHRUN_VARS,
    choose_device,
    env_int,
    require_cuda,
)
from .policy import run_mpi, run_torch

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...comm.base import Communicator
    from ...comm.torchdist import TorchCommunicator


# ---------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class World:
    """This process's place in a distributed launch (one node per rank)."""

    backend: str  # "mpi" or "torch"
    rank: int
    size: int
    #: a communicator without neighbours, for the start-up checks and small collectives
    comm: Communicator
    #: builds the node's communicator from its neighbour list (collective)
    node: Callable[[list[int]], Communicator]
    #: the communication library, for config.json
    vendor: str
    local_rank: int = 0
    #: the library's own dense all-reduce, ``recv = Σ_ranks send`` (fp32 arrays of one
    #: shape; ``MPI_Allreduce`` or ``torch.distributed.all_reduce``), for the benchmarks'
    #: baseline; not bit-reproducible, unlike ``comm.allreduce`` (rank order)
    allreduce_sum: Callable[[np.ndarray, np.ndarray], None] | None = None
    #: the name of that all-reduce in reports
    allreduce_name: str = ""


def mpi_world() -> World:
    """``MPI.COMM_WORLD`` as a :class:`World` (imports mpi4py, which initializes MPI)."""
    from mpi4py import MPI

    from ...comm.mpi import MPICommunicator

    world = MPI.COMM_WORLD
    local = next((int(os.environ[v]) for v in MPI_LOCAL_RANK_VARS
                  if os.environ.get(v, "").isdigit()), 0)

    def allreduce_sum(send: np.ndarray, recv: np.ndarray) -> None:
        world.Allreduce(send, recv, op=MPI.SUM)

    return World("mpi", world.Get_rank(), world.Get_size(), MPICommunicator([], world),
                 lambda nb: MPICommunicator(nb, world),
                 MPI.Get_library_version().splitlines()[0].strip(), local, allreduce_sum,
                 "MPI_Allreduce(SUM)")


def torch_world(device: str) -> World:
    """The torchrun job as a :class:`World` (initializes the process group once)."""
    import torch
    import torch.distributed as dist

    launch = init_from_env(device=device)

    def allreduce_sum(send: np.ndarray, recv: np.ndarray) -> None:
        if launch.comm_device.type == "cpu":  # gloo: in place in recv's memory
            np.copyto(recv, send)
            dist.all_reduce(torch.from_numpy(recv))
            return
        buf = torch.from_numpy(send).to(launch.comm_device)
        dist.all_reduce(buf)
        np.copyto(recv, buf.cpu().numpy())

    return World("torch", launch.rank, launch.size, launch.communicator([]),
                 lambda nb: launch.communicator(nb),
                 f"torch.distributed {launch.backend} on {launch.comm_device}",
                 launch.local_rank, allreduce_sum, "torch.distributed.all_reduce(SUM)")


def run_world(backend: str, main: Callable[[World], int], device: str = "cpu") -> int:
    """Run ``main(world)`` on every rank of an MPI (``backend="mpi"``) or torchrun
    (``"torch"``, on ``device``) launch, under that launcher's exit policy."""
    if backend == "mpi":
        return run_mpi(lambda: main(mpi_world()))
    if backend == "torch":
        return run_torch(lambda: main(torch_world(device)))
    raise UsageError(f"the backend must be mpi or torch here (one node per rank), got "
                     f"{backend!r}; start the program with mpiexec or torchrun.")


# ---------------------------------------------------------------------------- torchrun
#: seconds any collective or exchange may wait for a peer before it raises (the process
#: group's timeout); long enough for rank 0 to evaluate a model while the others wait
DEFAULT_TIMEOUT_S = 600.0
#: the torch.distributed backends
TORCH_BACKENDS = ("gloo", "nccl")


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

    def communicator(self, neighbors: Sequence[int] = (), **kwargs: Any) -> TorchCommunicator:
        """A :class:`~choco.comm.torchdist.TorchCommunicator` of the default group
        (collective: every rank)."""
        from ...comm.torchdist import TorchCommunicator

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
    import torch
    import torch.distributed as dist

    name = (backend or "auto").strip().lower()
    if name not in (*TORCH_BACKENDS, "auto"):
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
    if kind == "auto":  # with gloo the messages are host buffers: auto stays on the CPU
        kind = "cuda" if torch.cuda.is_available() and name != "gloo" else "cpu"
    if name == "auto":
        name = "nccl" if kind == "cuda" else "gloo"
    if kind == "cuda":  # refused before the environment is read
        require_cuda("device", kind)
    if name == "nccl" and (kind != "cuda" or not dist.is_nccl_available()):
        raise UsageError("the nccl backend needs CUDA devices and a torch build with NCCL; "
                         "use --device cuda on GPUs, or the gloo backend on CPU.")
    initialized = dist.is_available() and dist.is_initialized()
    if initialized:  # by this function earlier, or by the program itself
        rank, size = dist.get_rank(), dist.get_world_size()
        local_rank = env_int("LOCAL_RANK", 0)
    else:
        rank, size, local_rank = _torchrun_env()
    dev = choose_device(kind, local_rank, option="device", one_per_rank=True)
    if dev.type == "cuda":
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
    import torch.distributed as dist

    try:
        backend = dist.distributed_c10d._get_default_group()._get_backend(device)
        return float(backend.options._timeout.total_seconds())
    except Exception:  # a private interface: unknown rather than wrong
        return None


def _torchrun_env() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from the environment, checked."""
    missing = [v for v in (*TORCHRUN_VARS[:2], *TORCHRUN_ADDRESS_VARS)
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

"""How a program starts and ends: launcher, world, device, exit status, abort on error.

Everything the command-line programs (and scripts that run the library under a launcher)
need to know about the process they run in is here, each written once:

* **exit codes**: :data:`USAGE_EXIT` (2, a user error, as argparse) and
  :data:`DIVERGED_EXIT` (3, a training run whose loss stopped being finite);
* **launcher detection** from the launchers' environment variables (one table of them,
  below): :func:`launched_by_mpi` (mpiexec, srun with an MPI plugin),
  :func:`launched_by_torchrun`, :func:`launcher_rank`, and :func:`resolve_backend`, which
  turns ``--backend auto`` into ``mpi``, ``torch`` or ``local``;
  :func:`refuse_local_under_mpi` stops a ``--backend local`` run started once per rank;
* **the world** (:class:`World`): rank, size, a communicator without neighbours for the
  start-up checks and a factory for the node's communicator, from MPI
  (:func:`mpi_world`) or torchrun (:func:`torch_world`, which initializes the process
  group with :func:`init_from_env`);
* **device choice**: :func:`choose_device` (``cpu``, ``cuda``, ``cuda:i``, ``auto``);
* **the exit policy** (:func:`run`, :func:`run_local`, :func:`run_mpi`,
  :func:`run_torch`): a user error (:class:`~choco.errors.ChocoError`) prints one
  paragraph ``error: ...`` and exits with status 2; under MPI or torchrun any exception on
  any rank ends the whole job, so no rank is left waiting in a collective.

A script that uses the library under torchrun::

    torchrun --standalone --nproc-per-node 8 my_script.py        # one machine, gloo

    # my_script.py
    from choco.run.launch import init_from_env, run_torch
    def main() -> int:
        launch = init_from_env()                   # gloo on CPU; device="cuda" -> NCCL
        comm = launch.communicator(topology.neighbors(launch.rank))
        ...
        return 0
    sys.exit(run_torch(main))

Nothing here imports torch or mpi4py at import time (``python -m topologies`` uses the exit
policy and starts without them); they are imported by the functions that need them.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ChocoError, CommError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..comm.base import Communicator
    from ..comm.torchdist import TorchCommunicator

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "DEVICES",
    "DIVERGED_EXIT",
    "USAGE_EXIT",
    "TorchLaunch",
    "World",
    "choose_device",
    "init_from_env",
    "launched_by_mpi",
    "launched_by_torchrun",
    "launcher_rank",
    "mpi_world",
    "refuse_local_under_mpi",
    "resolve_backend",
    "run",
    "run_local",
    "run_mpi",
    "run_torch",
    "run_world",
    "torch_world",
]

# ---------------------------------------------------------------------------- exit codes
#: exit status of a user error, any :class:`~choco.errors.ChocoError` (argparse uses 2 too)
USAGE_EXIT = 2
#: exit status of a training run that diverged (non-finite loss); its last row is written
DIVERGED_EXIT = 3

# ---------------------------------------------------------------------------- launchers
#: size of the job, set in every rank by an MPI launcher (MPICH/hydra, Open MPI, PMIx, srun)
MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
#: this process's rank, set by an MPI launcher
MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
#: this process's rank on its machine (hydra, Open MPI, srun)
MPI_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
#: torchrun's per-worker variables
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: set by torchrun's agent alone (also when torchrun itself was started by srun)
TORCHRUN_AGENT_VAR = "TORCHELASTIC_RUN_ID"
#: where torchrun's workers meet
TORCHRUN_ADDRESS_VARS = ("MASTER_ADDR", "MASTER_PORT")
#: tasks of an srun step (set with or without an MPI plugin)
SRUN_TASKS_VAR = "SLURM_STEP_NUM_TASKS"

#: the ``--backend`` choices of every program
BACKENDS = ("auto", "local", "mpi", "torch")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process with more than one rank."""
    return any(_env_int(var, 1) > 1 for var in MPI_SIZE_VARS)


def launched_by_torchrun() -> bool:
    """Whether torchrun (or ``python -m torch.distributed.run``) started this process.

    True if torchrun's agent variable ``TORCHELASTIC_RUN_ID`` is set (also when torchrun
    itself was started by ``srun`` on several nodes), or if ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` are all set while no MPI launcher's size variable is.
    """
    if os.environ.get(TORCHRUN_AGENT_VAR):
        return True
    if not all(os.environ.get(v, "").strip() for v in TORCHRUN_VARS):
        return False
    return not any(os.environ.get(v) for v in MPI_SIZE_VARS)


def launcher_rank() -> int:
    """This process's rank as the MPI launcher's environment gives it (0 when not launched)."""
    for var in MPI_RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def resolve_backend(name: str) -> str:
    """``auto`` → ``torch`` under torchrun, ``mpi`` under an MPI launcher with several ranks,
    else ``local``; any other name is checked and returned."""
    if name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}.")
    if name == "auto":  # torchrun first: under `srun torchrun` srun's PMI variables are set too
        if launched_by_torchrun():
            return "torch"
        return "mpi" if launched_by_mpi() else "local"
    return name


def refuse_local_under_mpi() -> None:
    """Every rank running the whole network would write the same files: refuse it."""
    tasks = os.environ.get(SRUN_TASKS_VAR, "1")
    if not launched_by_mpi() and tasks.isdigit() and int(tasks) > 1:
        raise UsageError(
            f"this process is one of {tasks} tasks started by srun without an MPI plugin (no "
            "PMI variables), so every task would run the whole network and write the same "
            "files; launch with srun --mpi=pmi2 (or mpiexec), or run a single task."
        )
    world = os.environ.get("WORLD_SIZE", "1")
    if launched_by_torchrun() and world.isdigit() and int(world) > 1:
        raise UsageError(
            f"--backend local runs every node in one process, but torchrun started {world} "
            "processes (each would run the whole network and write the same files); pass "
            "--backend torch (or auto), or run without torchrun."
        )
    if launched_by_mpi():
        raise UsageError(
            "--backend local runs every node in one process, but this process was started by "
            "an MPI launcher with several ranks (each would run the whole network and write "
            "the same files); pass --backend mpi (or auto), or run without mpiexec."
        )


# ---------------------------------------------------------------------------- devices
#: the ``--device`` choices (``cuda:i`` too where a program says so)
DEVICES = ("cpu", "cuda", "auto")


def choose_device(name: str, local_rank: int = 0, *, option: str = "--device",
                  indexed: bool = False, one_per_rank: bool = False) -> torch.device:
    """The device a rank computes on.

    ``cpu``; ``cuda``: GPU ``local_rank mod count`` (``one_per_rank``: GPU ``local_rank``,
    refusing more ranks on a machine than it has GPUs); ``auto``: ``cuda`` when torch sees
    a GPU, else ``cpu``; ``cuda:i`` (only if ``indexed``): GPU ``i``. ``option`` names the
    setting in the error messages.

    Raises
    ------
    UsageError
        For another name, or CUDA asked for where torch sees none (or too few GPUs).
    """
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    allowed = "cpu, cuda, cuda:i or auto" if indexed else "cpu, cuda or auto"
    try:
        device = torch.device(text) if text.startswith("cuda") else None
    except RuntimeError:
        device = None
    if device is None or (device.index is not None and not indexed):
        raise UsageError(f"{option} must be one of {allowed}, got {name!r}; e.g. "
                         f"{option} cpu.")
    _require_cuda(option, str(name))
    if device.index is not None:
        return device
    count = torch.cuda.device_count()
    if one_per_rank and local_rank >= count:
        raise UsageError(f"local rank {local_rank} needs a CUDA device of its own but only "
                         f"{count} are visible on this machine; start at most {count} "
                         "processes per node (torchrun --nproc-per-node).")
    return torch.device("cuda", local_rank % count)


def _require_cuda(option: str, name: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{option} {name} was asked for but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use {option} cpu (or auto), or a "
                         "CUDA build of torch on a machine with GPUs.")


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

    from ..comm.mpi import MPICommunicator

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
        from ..comm.torchdist import TorchCommunicator

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
        _require_cuda("device", kind)
    if name == "nccl" and (kind != "cuda" or not dist.is_nccl_available()):
        raise UsageError("the nccl backend needs CUDA devices and a torch build with NCCL; "
                         "use --device cuda on GPUs, or the gloo backend on CPU.")
    initialized = dist.is_available() and dist.is_initialized()
    if initialized:  # by this function earlier, or by the program itself
        rank, size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", 0)
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


# ---------------------------------------------------------------------------- exit policy
#: seconds a non-zero rank waits for rank 0 to end the job first, so that an error raised
#: on every rank is shown once
GRACE_SECONDS = 2.0
#: seconds between writing the error and MPI_Abort, for the launcher to forward the output
ABORT_DRAIN_SECONDS = 0.3
#: seconds a torchrun worker whose peer died waits for torchrun to end it before it says so
PEER_GRACE_SECONDS = 10.0
#: error texts of a torch.distributed operation that failed because another rank died
#: (gloo: "Connection closed by peer"; NCCL after an abort): that rank's error is the one
#: to show
PEER_FAILURE_TEXTS = ("closed by peer", "reset by peer", "communicator was aborted")
#: exceptions reported as one paragraph, without a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ChocoError,)


def run(backend: str, main: Callable[[str], int]) -> int:
    """Resolve ``backend`` and run ``main(backend)`` under the matching exit policy."""
    try:
        resolved = resolve_backend(backend)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return USAGE_EXIT
    if resolved == "mpi":
        return run_mpi(lambda: main(resolved))
    if resolved == "torch":
        return run_torch(lambda: main(resolved))
    return run_local(lambda: main(resolved))


def run_local(main: Callable[[], int]) -> int:
    """Run ``main`` in a single process: user errors → ``error: ...``, exit 2."""
    try:
        return main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return USAGE_EXIT


def run_mpi(main: Callable[[], int]) -> int:
    """Run ``main`` on every rank of ``MPI.COMM_WORLD``; any exception on any rank aborts
    the job (``MPI_Abort``).

    Rank 0 reports first; another rank reports only if rank 0 did not abort within
    :data:`GRACE_SECONDS` (an error raised on every rank is printed once). With one rank
    the message is printed and the code returned.
    """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    try:
        return main()
    except USER_ERRORS as exc:
        message, code = f"error: {exc}\n", USAGE_EXIT
    except SystemExit as exc:
        if exc.code in (0, None) or size == 1:
            raise
        message, code = "", exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        message, code = f"[rank {rank}] " + traceback.format_exc(), 1
    if size == 1:
        sys.stderr.write(message)
        return code
    if rank != 0:
        time.sleep(GRACE_SECONDS)
        message = f"[rank {rank}] {message}" if not message.startswith("[rank") else message
    sys.stderr.write(message)
    _flush()
    # give the launcher's proxy a moment to forward what was written before MPI_Abort tears
    # the job down (seen: the error line lost when aborting at once)
    time.sleep(ABORT_DRAIN_SECONDS)
    world.Abort(code)
    return code  # not reached: Abort ends the process


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
    ranks) the message is printed and the code returned, as :func:`run_local` does.
    """
    secondary: str | None = None
    try:
        code = main()
    except USER_ERRORS as exc:
        message, code = f"error: {exc}\n", USAGE_EXIT
    except SystemExit as exc:
        if exc.code in (0, None) or _torch_place()[1] == 1:
            _destroy_group()
            raise
        message, code = "", exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        secondary = _peer_failed(exc)
        message, code = f"[rank {_torch_place()[0]}] " + traceback.format_exc(), 1
    else:
        size = _torch_place()[1]
        _destroy_group()
        if size > 1:
            # end here rather than in interpreter finalization, where gloo's worker threads
            # were seen to abort the process ("terminate called without an active
            # exception", SIGABRT, about 1 run in 15 on this 2-core machine)
            _flush()
            os._exit(code)
        return code
    rank, size = _torch_place()
    if size == 1:
        sys.stderr.write(message)
        _flush()
        _destroy_group()
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


def _torch_place() -> tuple[int, int]:
    """``(rank, size)``: from the default group if initialized, else torchrun's variables."""
    import torch.distributed as dist

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
    import torch.distributed as dist

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


def _destroy_group() -> None:
    """Destroy the default process group (a clean exit; NCCL warns otherwise)."""
    import torch.distributed as dist

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

"""Where this process runs: the launchers' variables, ``--backend`` and ``--device``.

Every environment variable a launcher sets that choco reads is listed once, at the top of
this module: MPI launchers (mpiexec of MPICH or Open MPI, srun with an MPI plugin) and
torchrun.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

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


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process with more than one rank."""
    return any(env_int(var, 1) > 1 for var in MPI_SIZE_VARS)


def launch_command(n: int) -> str:
    """How to start ``n`` ranks, in the terms of the launcher that started this process:
    ``torchrun --nproc-per-node n`` under torchrun, ``srun --ntasks n`` under srun (an srun
    step without torchrun), else ``mpiexec -n n``. For the hints of error messages."""
    if launched_by_torchrun():
        return f"torchrun --nproc-per-node {n}"
    if os.environ.get(SRUN_TASKS_VAR, "").strip():
        return f"srun --ntasks {n}"
    return f"mpiexec -n {n}"


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
    require_cuda(option, str(name))
    if device.index is not None:
        return device
    count = torch.cuda.device_count()
    if one_per_rank and local_rank >= count:
        raise UsageError(f"local rank {local_rank} needs a CUDA device of its own but only "
                         f"{count} are visible on this machine; start at most {count} "
                         "processes per node (torchrun --nproc-per-node).")
    return torch.device("cuda", local_rank % count)


def require_cuda(option: str, name: str) -> None:
    """Refuse ``option name`` (a CUDA device) when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{option} {name} was asked for but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use {option} cpu (or auto), or a "
                         "CUDA build of torch on a machine with GPUs.")

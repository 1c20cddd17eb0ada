"""What every command-line program shares: errors, backends, warnings, help, abort-on-error.

A user error (any :class:`choco.errors.ChocoError`: bad spec, wrong rank count, missing
file) is printed as one paragraph on stderr, ``error: ...``, and the program exits with
status 2 having written nothing. Under MPI any exception on any rank aborts the whole job
(``MPI_Abort``), so no rank is left waiting in a collective; rank 0 reports first, other
ranks report only if rank 0 did not abort within a grace period (an error raised on every
rank is printed once). Python warnings are printed as ``warning: ...``, once each, by rank 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable

from .. import __version__
from ..errors import ChocoError, UsageError

__all__ = [
    "DIVERGED_EXIT",
    "USAGE_EXIT",
    "HelpFormatter",
    "UsageError",
    "add_backend_argument",
    "add_version_argument",
    "launched_by_mpi",
    "launcher_rank",
    "prog_name",
    "refuse_local_under_mpi",
    "resolve_backend",
    "run",
    "run_local",
    "run_mpi",
    "setup_output",
]

#: exit status of a user error (argparse uses 2 as well)
USAGE_EXIT = 2
#: exit status of a training run that diverged (non-finite loss); its last row is written
DIVERGED_EXIT = 3
#: seconds a non-zero rank waits for rank 0 to abort first
GRACE_SECONDS = 2.0
#: seconds between writing the error and MPI_Abort, for the launcher to forward the output
ABORT_DRAIN_SECONDS = 0.3
#: exceptions reported as one paragraph, without a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ChocoError,)

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process with more than one rank."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "1")
        if value.isdigit() and int(value) > 1:
            return True
    return False


def launcher_rank() -> int:
    """This process's rank as the launcher's environment gives it (0 when not launched)."""
    for var in _RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def refuse_local_under_mpi() -> None:
    """Every rank running the whole network would write the same files: refuse it."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")
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


BACKENDS = ("auto", "local", "mpi", "torch")


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (:func:`choco.comm.torchdist.launched_by_torchrun`)."""
    from ..comm.torchdist import launched_by_torchrun as by_torchrun

    return by_torchrun()


def resolve_backend(name: str) -> str:
    """``auto`` → ``mpi`` under an MPI launcher with several ranks, ``torch`` under torchrun,
    else ``local``."""
    if name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}.")
    if name == "auto":  # torchrun first: under `srun torchrun` srun's PMI variables are set too
        if launched_by_torchrun():
            return "torch"
        return "mpi" if launched_by_mpi() else "local"
    return name


def prog_name(script: str, module: str) -> str:
    """The name the user typed: the console script (``choco-train``) or ``python -m module``."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if argv0 == script else f"python -m {module}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default shown (``(default: ...)``)."""


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: the program name and choco's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s (choco {__version__})")


def add_gossip_arguments(parser: argparse.ArgumentParser) -> None:
    """``--topology``, ``--mixing`` and ``--compressor``, the same in every program."""
    parser.add_argument("--topology", default="ring:8",
                        help="ring:8, torus:4x4, social, er:16:0.3, ...; time-varying: "
                        "onepeer:16, base:12[:K], matching:16[:seed=S], SPEC+pga:H")
    parser.add_argument("--mixing", default="metropolis", help="metropolis | maxdegree | uniform")
    parser.add_argument("--compressor", default="sign",
                        help="compressor spec: identity, sign, topk:0.01, ...")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend auto|local|mpi`` with the same meaning in every program."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: mpi when started by mpiexec/srun with more than one rank, "
                        "torch when started by torchrun, else local (every node in this "
                        "process)")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as ``warning: message``, without file and source line, on rank 0."""
    if launcher_rank() != 0:
        return
    print(f"warning: {message}", file=sys.stderr, flush=True)


def setup_output() -> None:
    """Logging to stderr, and warnings as one clean line each, printed once, by rank 0."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.showwarning = _show_warning
    warnings.simplefilter("once")  # the same text from two places is printed once


def run_local(main: Callable[[], int]) -> int:
    """Run ``main`` in a single process: user errors → ``error: ...``, exit 2."""
    try:
        return main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return USAGE_EXIT


def run_mpi(main: Callable[[], int]) -> int:
    """Run ``main`` on every rank; any exception on any rank aborts the job."""
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
    sys.stdout.flush()
    sys.stderr.flush()
    # give the launcher's proxy a moment to forward what was written before MPI_Abort tears
    # the job down (seen: the error line lost when aborting at once)
    time.sleep(ABORT_DRAIN_SECONDS)
    world.Abort(code)
    return code  # not reached: Abort ends the process


def run(backend: str, main: Callable[[str], int]) -> int:
    """Resolve ``backend`` and run ``main(backend)`` with the matching error handling."""
    try:
        resolved = resolve_backend(backend)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return USAGE_EXIT
    if resolved == "mpi":
        return run_mpi(lambda: main(resolved))
    if resolved == "torch":
        from ..comm.torchdist import run_torch

        return run_torch(lambda: main(resolved))
    return run_local(lambda: main(resolved))

"""Shared command-line plumbing: user errors, exit codes, and abort-on-error under MPI.

A user error (bad spec, wrong rank count, missing file) is printed as one paragraph on
stderr, ``error: ...``, and the program exits with status 2 having written nothing. Under
MPI any exception on any rank aborts the whole job (``MPI_Abort``), so no rank is left
waiting in a collective; rank 0 reports first, other ranks report only if rank 0 did not
abort within a grace period (errors raised on every rank are printed once).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .comm.base import CommError
from .compress.base import CompressionError
from .gossip import GossipError

#: exit status of a user error (argparse uses 2 as well)
USAGE_EXIT = 2
#: seconds a non-zero rank waits for rank 0 to abort first
GRACE_SECONDS = 2.0


class UsageError(ValueError):
    """Bad user input; the message says what is required, what was given and the fix."""


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process with more than one rank."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(var, "1")
        if value.isdigit() and int(value) > 1:
            return True
    return False


def refuse_local_under_mpi() -> None:
    """Every rank running the whole network would write the same files: refuse it."""
    if launched_by_mpi():
        raise UsageError(
            "--backend local runs every node in one process, but this process was started by "
            "an MPI launcher with several ranks (each would run the whole network and write "
            "the same files); pass --backend mpi, or run without mpiexec."
        )


def load_npy(path: Path, option: str, holding: str, example: str) -> np.ndarray:
    """Load a ``.npy`` array given on the command line, or raise a one-paragraph error.

    ``holding`` says what the file must hold (``"a 1-D float array"``), ``example`` how to
    make one (``"numpy.save('x.npy', numpy.random.randn(1000))"``).
    """
    if not path.is_file():
        raise UsageError(f"{option} must be an existing .npy file holding {holding}, got "
                         f"{path} (not found); create one with {example}.")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{option} {path} is not a readable .npy array ({exc}); write it "
                         "with numpy.save.") from None


#: exceptions reported as one paragraph, without a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, CompressionError, GossipError, CommError,
)


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
    world.Abort(code)
    return code  # not reached: Abort ends the process

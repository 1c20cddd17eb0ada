"""How a program ends: exit codes, and one failing rank ending the whole job.

A user error (any :class:`~choco.errors.ChocoError`) is one paragraph ``error: ...`` on
stderr and exit status :data:`USAGE_EXIT`; Ctrl-C is one line and exit status
:data:`INTERRUPTED_EXIT` (130); under MPI (:func:`run_mpi`) or torchrun
(:func:`run_torch`) any exception on any rank ends every rank, so none is left waiting in a
collective.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

from ...errors import ChocoError, UsageError
from .env import resolve_backend

# ---------------------------------------------------------------------------- exit codes
#: exit status of a user error, any :class:`~choco.errors.ChocoError` (argparse uses 2 too)
USAGE_EXIT = 2
#: exit status of a training run that diverged (non-finite loss); its last row is written
DIVERGED_EXIT = 3
#: exit status after Ctrl-C (SIGINT), as a shell reports a process killed by it (128 + 2)
INTERRUPTED_EXIT = 130
#: the one line printed on Ctrl-C instead of a KeyboardInterrupt traceback
INTERRUPTED_LINE = "interrupted (Ctrl-C)\n"


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
    """Run ``main`` in a single process: user errors → ``error: ...``, exit 2; Ctrl-C →
    one line, exit 130."""
    try:
        return main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return USAGE_EXIT
    except KeyboardInterrupt:
        return interrupted()


def interrupted() -> int:
    """Print the one Ctrl-C line; the exit status :data:`INTERRUPTED_EXIT`."""
    sys.stderr.write(INTERRUPTED_LINE)
    _flush()
    return INTERRUPTED_EXIT


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
    except KeyboardInterrupt:  # mpiexec forwards Ctrl-C to every rank: rank 0 says it
        message, code = INTERRUPTED_LINE if rank == 0 else "", INTERRUPTED_EXIT
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
    except KeyboardInterrupt:  # torchrun forwards Ctrl-C to every worker: rank 0 says it
        message = INTERRUPTED_LINE if _torch_place()[0] == 0 else ""
        code = INTERRUPTED_EXIT
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

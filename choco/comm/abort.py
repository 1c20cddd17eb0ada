"""One failing rank ends the job: the abort hook installed by the process communicators.

A script that imports the library and runs under plain ``mpiexec -n 4 python script.py`` (or
``torchrun``) has no one to end the job when one rank raises: the other ranks wait in their
next exchange forever (with MPI, spinning at full CPU until the allocation's time limit).
``python -m mpi4py script.py`` avoids that by aborting the job on an uncaught exception;
:class:`~choco.comm.mpi.MPICommunicator` and :class:`~choco.comm.torchdist.TorchCommunicator`
do the same for every script, when they are created:

* ``sys.excepthook`` and ``threading.excepthook`` are chained: the previous hook prints the
  traceback as usual, then one line says the job is being ended, then
  ``MPI_Abort(COMM_WORLD, 1)`` (MPI) or ``os._exit(1)`` after flushing stdout and stderr
  (torch: the process's sockets close, so its peers' exchanges fail instead of waiting, and
  torchrun stops the other workers).
* With one rank nothing changes (the traceback, exit status 1).
* Opt out with the environment variable ``CHOCO_NO_ABORT=1`` or the constructor argument
  ``abort_on_error=False``. ``SystemExit`` is never affected (``sys.exit(3)`` keeps its
  status), and an exception the program catches itself never reaches the hooks (the
  programs of :mod:`choco.run` catch every exception and apply their own exit codes).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["ENV_NO_ABORT", "abort_wanted", "install_abort_hook"]

#: environment variable that turns the abort hook off (``CHOCO_NO_ABORT=1``)
ENV_NO_ABORT = "CHOCO_NO_ABORT"
#: seconds between writing the traceback and ending the job, for the launcher to forward it
DRAIN_SECONDS = 0.3

_FALSE = ("", "0", "false", "no", "off")
_state: dict[str, Any] = {}


def abort_wanted(abort_on_error: bool | None = None) -> bool:
    """Whether a communicator installs the hook: the argument if given, else not when
    ``CHOCO_NO_ABORT`` is set to anything but ``0``/``false``/``no``/``off``/empty."""
    if abort_on_error is not None:
        return bool(abort_on_error)
    return os.environ.get(ENV_NO_ABORT, "").strip().lower() in _FALSE


def install_abort_hook(place: Callable[[], tuple[int, int]], end_job: Callable[[int], None],
                       how: str) -> None:
    """Chain ``sys.excepthook`` and ``threading.excepthook`` so that an uncaught exception
    ends the whole job (once per process; a second call changes nothing).

    Parameters
    ----------
    place
        ``() -> (rank, size)`` at the time of the exception; with ``size == 1`` the
        previous hook alone runs.
    end_job
        ``end_job(code)`` ends every rank (``MPI_Abort``) or this process (``os._exit``).
    how
        Named in the line printed before ending the job, e.g. ``"MPI_Abort"``.
    """
    if _state:
        return
    previous_sys = sys.excepthook
    previous_thread = threading.excepthook

    def end(exc_type: type[BaseException]) -> None:
        try:
            rank, size = place()
        except Exception:  # the backend is gone: nothing left to end
            return
        if size <= 1 or _state.get("ending"):
            return
        _state["ending"] = True
        sys.stderr.write(
            f"[rank {rank}] uncaught {exc_type.__name__}: ending the job ({how}) so that the "
            f"other ranks do not wait forever; set {ENV_NO_ABORT}=1 to turn this off\n")
        _flush()
        time.sleep(DRAIN_SECONDS)
        end_job(1)

    def sys_hook(exc_type: type[BaseException], exc: BaseException,
                 tb: TracebackType | None) -> None:
        previous_sys(exc_type, exc, tb)
        if not issubclass(exc_type, SystemExit):
            end(exc_type)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        previous_thread(args)
        if not issubclass(args.exc_type, SystemExit):
            end(args.exc_type)

    sys.excepthook = sys_hook
    threading.excepthook = thread_hook
    _state.update(sys=sys_hook, thread=thread_hook)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass

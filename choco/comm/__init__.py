"""Communicators: :class:`LocalNetwork` (in-process) and ``choco.comm.mpi`` (mpi4py).

``choco.comm.mpi`` is imported only on request, so importing choco never initialises MPI.
"""

from __future__ import annotations

from .base import CommError, Communicator, Exchange
from .local import LocalCommunicator, LocalNetwork

__all__ = ["CommError", "Communicator", "Exchange", "LocalCommunicator", "LocalNetwork"]

"""Communicators: :class:`LocalNetwork` (in-process) and ``choco.comm.mpi`` (mpi4py).

``choco.comm.mpi`` is imported only on request, so importing choco never initialises MPI.
:func:`check_agreement` (``choco.comm.agree``) checks with one collective that every rank
runs the same configuration from the same initial parameters.
"""

from __future__ import annotations

from .agree import AgreementError, check_agreement
from .base import CommError, Communicator, Exchange
from .local import LocalCommunicator, LocalNetwork

__all__ = [
    "AgreementError",
    "CommError",
    "Communicator",
    "Exchange",
    "LocalCommunicator",
    "LocalNetwork",
    "check_agreement",
]

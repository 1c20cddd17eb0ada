"""Communicators: :class:`LocalNetwork` (in-process), ``choco.comm.mpi`` (mpi4py) and
``choco.comm.torchdist`` (``torch.distributed`` under torchrun: gloo on CPU, NCCL on GPU).

``choco.comm.mpi`` is imported only on request, so importing choco never initialises MPI;
``choco.comm.torchdist`` is loaded on first use of ``choco.comm.TorchCommunicator``. Starting
a process group from torchrun's variables and ending the job when a rank fails are the run
layer's (:mod:`choco.run.launch`: ``init_from_env``, ``launched_by_torchrun``,
``run_torch``).

:func:`check_agreement` (``choco.comm.agree``) checks with one collective that every rank
runs the same configuration from the same initial parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    "TorchCommunicator",
    "check_agreement",
]

#: launch names that moved to the run layer (:mod:`choco.run.launch`)
_MOVED = ("init_from_env", "launched_by_torchrun", "run_torch", "TorchLaunch")

if TYPE_CHECKING:  # pragma: no cover
    from .torchdist import TorchCommunicator


def __getattr__(name: str) -> Any:
    if name == "TorchCommunicator":
        from .torchdist import TorchCommunicator

        return TorchCommunicator
    if name in _MOVED:
        raise AttributeError(f"choco.comm.{name} moved to the run layer: import it from "
                             f"choco.run.launch (from choco.run.launch import {name}).")
    raise AttributeError(f"module 'choco.comm' has no attribute {name!r}")

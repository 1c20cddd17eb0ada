"""Communicators: :class:`LocalNetwork` (in-process), ``choco.comm.mpi`` (mpi4py) and
``choco.comm.torchdist`` (``torch.distributed`` under torchrun: gloo on CPU, NCCL on GPU).

``choco.comm.mpi`` is imported only on request, so importing choco never initialises MPI;
``choco.comm.torchdist`` is loaded on first use of one of its names here
(``choco.comm.TorchCommunicator``, ``init_from_env``, ``launched_by_torchrun``,
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
    "init_from_env",
    "launched_by_torchrun",
    "run_torch",
]

#: names loaded from ``choco.comm.torchdist`` on first use
_TORCH_NAMES = ("TorchCommunicator", "init_from_env", "launched_by_torchrun", "run_torch")

if TYPE_CHECKING:  # pragma: no cover
    from .torchdist import TorchCommunicator, init_from_env, launched_by_torchrun, run_torch


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from . import torchdist

        return getattr(torchdist, name)
    raise AttributeError(f"module 'choco.comm' has no attribute {name!r}")

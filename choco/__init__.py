"""choco: decentralized training with arbitrary communication compression (CHOCO-SGD).

Koloskova, Lin, Stich, Jaggi: *Decentralized Deep Learning with Arbitrary Communication
Compression*, ICLR 2020, arXiv:1907.09356; CHOCO-Gossip from arXiv:1902.00340.

Importing choco is cheap: the names below load their modules (and torch) on first use,
and ``choco.comm.mpi`` (which initialises MPI) is imported only on request. ``choco.errors``
imports nothing else, so other packages (``topologies``) can derive their errors from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_LAZY = {
    "AgreementError": "choco.errors",
    "ChocoError": "choco.errors",
    "ChocoGossip": "choco.gossip",
    "ChocoSGD": "choco.optim",
    "Communicator": "choco.comm",
    "Compressor": "choco.compress",
    "GossipState": "choco.gossip",
    "LocalNetwork": "choco.comm",
    "check_agreement": "choco.comm",
    "make_compressor": "choco.compress",
    "tune_gamma": "choco.tuning",
}

__all__ = [
    "AgreementError",
    "ChocoError",
    "ChocoGossip",
    "ChocoSGD",
    "Communicator",
    "Compressor",
    "GossipState",
    "LocalNetwork",
    "__version__",
    "check_agreement",
    "make_compressor",
    "tune_gamma",
]

if TYPE_CHECKING:  # pragma: no cover
    from .comm import Communicator, LocalNetwork, check_agreement
    from .compress import Compressor, make_compressor
    from .errors import AgreementError, ChocoError
    from .gossip import ChocoGossip, GossipState
    from .optim import ChocoSGD
    from .tuning import tune_gamma


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'choco' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

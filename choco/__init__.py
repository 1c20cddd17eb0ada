"""choco: decentralized training with arbitrary communication compression (CHOCO-SGD).

Koloskova, Lin, Stich, Jaggi: *Decentralized Deep Learning with Arbitrary Communication
Compression*, ICLR 2020, arXiv:1907.09356; CHOCO-Gossip from arXiv:1902.00340.

Importing choco never initialises MPI: ``choco.comm.mpi`` is imported on request.
"""

from __future__ import annotations

from .comm import Communicator, LocalNetwork
from .compress import Compressor, make_compressor
from .gossip import ChocoGossip, GossipState

__version__ = "0.1.0"

__all__ = [
    "ChocoGossip",
    "Communicator",
    "Compressor",
    "GossipState",
    "LocalNetwork",
    "__version__",
    "make_compressor",
]

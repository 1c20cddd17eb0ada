"""Where this process runs in a distributed launch: MPI (mpiexec, srun) or torchrun.

A :class:`World` gives the run layer what it needs from either launcher: rank, size, a
communicator without neighbours for the start-up checks and small collectives, a factory for
the node's communicator, and the library name for ``config.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..comm.base import Communicator

__all__ = ["World", "mpi_world", "torch_world"]


@dataclass(frozen=True)
class World:
    """This process's place in a distributed launch (one node per rank)."""

    backend: str  # "mpi" or "torch"
    rank: int
    size: int
    #: a communicator without neighbours, for the start-up checks and small collectives
    comm: Communicator
    #: builds the node's communicator from its neighbour list (collective)
    node: Callable[[list[int]], Communicator]
    #: the communication library, for config.json
    vendor: str
    local_rank: int = 0


def mpi_world() -> World:
    from mpi4py import MPI

    from ..comm.mpi import MPICommunicator

    world = MPI.COMM_WORLD
    local = next((int(os.environ[v]) for v in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK",
                                               "SLURM_LOCALID") if os.environ.get(v, "").isdigit()),
                 0)
    return World("mpi", world.Get_rank(), world.Get_size(), MPICommunicator([], world),
                  lambda nb: MPICommunicator(nb, world),
                  MPI.Get_library_version().splitlines()[0].strip(), local)


def torch_world(device: str) -> World:
    from ..comm.torchdist import init_from_env

    launch = init_from_env(device=device)
    return World("torch", launch.rank, launch.size, launch.communicator([]),
                 lambda nb: launch.communicator(nb),
                 f"torch.distributed {launch.backend} on {launch.comm_device}", launch.local_rank)



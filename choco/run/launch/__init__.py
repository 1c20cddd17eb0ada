"""How a program starts and ends: launcher, world, device, exit status, abort on error.

Everything the command-line programs (and scripts that run the library under a launcher)
need to know about the process they run in is here, each written once:

* **exit codes**: :data:`USAGE_EXIT` (2, a user error, as argparse),
  :data:`DIVERGED_EXIT` (3, a training run whose loss stopped being finite) and
  :data:`INTERRUPTED_EXIT` (130, Ctrl-C: one line, :func:`interrupted`);
* **launcher detection** from the launchers' environment variables (one table of them,
  at the top of :mod:`.env`): :func:`launched_by_mpi` (mpiexec, srun with an MPI plugin),
  :func:`launched_by_torchrun`, :func:`launcher_rank`, :func:`launch_command` (how to
  start N ranks with the same launcher, for error hints), and :func:`resolve_backend`, which
  turns ``--backend auto`` into ``mpi``, ``torch`` or ``local``;
  :func:`refuse_local_under_mpi` stops a ``--backend local`` run started once per rank;
* **the world** (:class:`World`): rank, size, a communicator without neighbours for the
  start-up checks and a factory for the node's communicator, from MPI
  (:func:`mpi_world`) or torchrun (:func:`torch_world`, which initializes the process
  group with :func:`init_from_env`);
* **device choice**: :func:`choose_device` (``cpu``, ``cuda``, ``cuda:i``, ``auto``);
* **the exit policy** (:func:`run`, :func:`run_local`, :func:`run_mpi`,
  :func:`run_torch`): a user error (:class:`~choco.errors.ChocoError`) prints one
  paragraph ``error: ...`` and exits with status 2; under MPI or torchrun any exception on
  any rank ends the whole job, so no rank is left waiting in a collective.

A script that uses the library under torchrun::

    torchrun --standalone --nproc-per-node 8 my_script.py        # one machine, gloo

    # my_script.py
    from choco.run.launch import init_from_env, run_torch
    def main() -> int:
        launch = init_from_env()                   # gloo on CPU; device="cuda" -> NCCL
        comm = launch.communicator(topology.neighbors(launch.rank))
        ...
        return 0
    sys.exit(run_torch(main))

The package is three modules, imported together here: :mod:`.env` (launcher variables,
backend and device choice), :mod:`.policy` (exit codes and the exit policy) and
:mod:`.world` (the world, the torchrun process group). Nothing here imports torch or mpi4py
at import time (``python -m topologies`` uses the exit policy and starts without them);
they are imported by the functions that need them.
"""

from __future__ import annotations

from .env import (
    BACKENDS,
    DEVICES,
    choose_device,
    launch_command,
    launched_by_mpi,
    launched_by_torchrun,
    launcher_rank,
    refuse_local_under_mpi,
    resolve_backend,
)
from .policy import (
    DIVERGED_EXIT,
    INTERRUPTED_EXIT,
    USAGE_EXIT,
    interrupted,
    run,
    run_local,
    run_mpi,
    run_torch,
)
from .world import (
    DEFAULT_TIMEOUT_S,
    TorchLaunch,
    World,
    init_from_env,
    mpi_world,
    run_world,
    torch_world,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "DEVICES",
    "DIVERGED_EXIT",
    "INTERRUPTED_EXIT",
    "USAGE_EXIT",
    "TorchLaunch",
    "World",
    "choose_device",
    "init_from_env",
    "interrupted",
    "launch_command",
    "launched_by_mpi",
    "launched_by_torchrun",
    "launcher_rank",
    "mpi_world",
    "refuse_local_under_mpi",
    "resolve_backend",
    "run",
    "run_local",
    "run_mpi",
    "run_torch",
    "run_world",
    "torch_world",
]

"""Rank 1 raises while the other ranks wait in a collective: the job must abort, not hang.

Run as ``mpiexec -n N python tests/mpi/fail_check.py`` (plain python: the abort comes from
``choco.run.cli.run_mpi``, not from ``python -m mpi4py``).
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if world.Get_rank() == 1:
        raise RuntimeError("deliberate failure on rank 1")
    buf = np.zeros(1)
    world.Allreduce(np.ones(1), buf)  # never completes: rank 1 is gone
    return 0


if __name__ == "__main__":
    from choco.run.cli import run_mpi

    sys.exit(run_mpi(main))

"""A rank fails while the others wait: ``run_torch`` must end the whole torchrun job.

Run as ``torchrun --standalone --nproc-per-node 3 tests/torchrun/fail_check.py MODE STAMP``:

* ``raise``: rank 1 raises ``RuntimeError`` while rank 0 waits in a collective
  (``allreduce``) and rank 2 in a gossip exchange (rank 0 never posts); rank 1 writes the
  time of its failure (``time.time()``) to STAMP first. Expected: rank 1's traceback once,
  no rank hangs.
* ``agree``: every rank raises :class:`~choco.errors.AgreementError` (ranks 0-1 and rank 2
  pass different configurations to ``check_agreement``). Expected: ``error: ...`` printed
  once (by rank 0), exit status 2 for the worker.
* ``usage``: rank 2 alone raises a :class:`~choco.errors.UsageError` while ranks 0 and 1
  wait in a collective. Expected: ``[rank 2] error: ...``, exit status 2.
* ``hang``: rank 1 stays alive but never posts (it sleeps for a minute) while ranks 0 and 2
  wait in a gossip exchange; the process group's timeout is :data:`HANG_TIMEOUT_S`.
  Expected: rank 0 raises gloo's timeout error after that time and the job ends.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from choco.comm import check_agreement
from choco.errors import UsageError
from choco.run.launch import init_from_env, run_torch

#: the process-group timeout of the ``hang`` case, seconds
HANG_TIMEOUT_S = 3.0


def main() -> int:
    mode, stamp = sys.argv[1], sys.argv[2]
    launch = init_from_env(timeout_s=HANG_TIMEOUT_S if mode == "hang" else 120)
    rank = launch.rank
    comm = launch.communicator()
    comm.barrier()
    if mode == "raise":
        ring = launch.communicator([(rank - 1) % 3, (rank + 1) % 3])
        ring.barrier()
        if rank == 1:
            with open(stamp, "w") as fh:
                fh.write(repr(time.time()))
            raise RuntimeError("deliberate failure on rank 1")
        if rank == 0:
            comm.allreduce(np.ones(3))  # never completes: rank 1 is gone
        else:
            ring.neighbor_exchange(torch.zeros(8, dtype=torch.uint8)).wait()  # nor this
    elif mode == "agree":
        check_agreement(comm, config={"compressor": "sign" if rank < 2 else "topk:0.01"})
    elif mode == "usage":
        if rank == 2:
            with open(stamp, "w") as fh:
                fh.write(repr(time.time()))
            raise UsageError("deliberate usage error on rank 2")
        comm.allreduce(np.ones(3))
    elif mode == "hang":
        ring = launch.communicator([(rank - 1) % 3, (rank + 1) % 3])
        ring.barrier()
        if rank == 1:
            with open(stamp, "w") as fh:
                fh.write(repr(time.time()))
            time.sleep(60)
        ring.neighbor_exchange(torch.zeros(8, dtype=torch.uint8)).wait()
    return 0


if __name__ == "__main__":
    sys.exit(run_torch(main))

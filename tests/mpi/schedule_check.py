"""Time-varying gossip over a real launcher equals the in-process network bit for bit.

Run as ``mpiexec -n N python -m mpi4py tests/mpi/schedule_check.py mpi OUT.json SPEC...`` or
``torchrun --standalone --nproc-per-node N tests/mpi/schedule_check.py torch OUT.json SPEC...``.
Every rank runs CHOCO-Gossip (identity γ = 1, sign, top-k) and exact gossip on each schedule,
one node per rank, through :func:`choco.timevarying.make_choco_gossip`; rank 0 reruns the same
per-node program on the in-process network (one thread per node) and writes OUT.json with,
per case, whether the final iterates and the bytes sent are identical.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from choco.comm.local import LocalNetwork
from choco.compress import make_compressor
from choco.timevarying import make_choco_gossip, make_exact_gossip
from topologies import parse_topology

ROUNDS = 9
DIM = 29
CASES = [("identity", 1.0), ("sign", 0.4), ("topk:0.25", 0.3), ("exact", None)]


def node_program(spec: str, case: str, gamma: float | None):
    topo = parse_topology(spec)
    x0 = np.random.default_rng(11).standard_normal((topo.n, DIM))

    def run(comm) -> tuple[np.ndarray, int]:
        if case == "exact":
            gossip = make_exact_gossip(comm, topo)
        else:
            gossip = make_choco_gossip(comm, topo, make_compressor(case), gamma, seed=5)
        x = torch.from_numpy(x0[comm.rank].copy())
        for _ in range(ROUNDS):
            gossip.begin(x)
            gossip.progress()
            gossip.finish(x)
        return x.numpy().copy(), int(gossip.bytes_sent)

    return topo, run


def world(backend: str, neighbors: list[int]):
    if backend == "mpi":
        from choco.comm.mpi import MPICommunicator

        return MPICommunicator(neighbors)
    from choco.run.launch import init_from_env

    return init_from_env().communicator(neighbors)


def main() -> None:
    backend, out, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    checks: dict[str, bool] = {}
    rank = None
    for spec in specs:
        for case, gamma in CASES:
            topo, run = node_program(spec, case, gamma)
            comm = world(backend, topo.neighbors(_rank(backend)))
            rank = comm.rank
            x, sent = run(comm)
            xs = comm.allgather(x)
            bytes_all = comm.allgather(np.array([sent], dtype=np.int64))[:, 0]
            if rank == 0:
                net = LocalNetwork([topo.neighbors(i) for i in range(topo.n)])
                local = net.run(run)
                checks[f"{spec}/{case}/x"] = bool(np.array_equal(
                    xs, np.stack([r[0] for r in local])))
                checks[f"{spec}/{case}/bytes"] = [int(b) for b in bytes_all] == \
                    [r[1] for r in local]
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"checks": checks}, fh)
    if backend == "torch":
        import os

        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)


def _rank(backend: str) -> int:
    if backend == "mpi":
        from mpi4py import MPI

        return MPI.COMM_WORLD.Get_rank()
    import os

    return int(os.environ["RANK"])


if __name__ == "__main__":
    main()

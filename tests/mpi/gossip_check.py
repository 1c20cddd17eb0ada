"""Run under ``mpiexec -n N python -m mpi4py tests/mpi/gossip_check.py OUT.json``.

Every rank runs CHOCO-Gossip over MPI on several topologies and compressors; rank 0 then
reruns the same problems on the in-process network and checks, writing OUT.json:

* ``mpi_equals_local``: the MPI iterates equal the in-process ones bit for bit,
* ``copy_identity``: s_i = Σ_j w_ij x̂_j (the mirrored public copies) after the last step,
* ``mean_preserved``: the network mean of x is unchanged,
* ``exact_gossip``: identity with γ = 1 gives X_T = W^T X_0,
* ``lgc_switch_agreement``: when the last rank receives node 0's autoencoder corrupted at
  ``lgc``'s switch, every rank raises :class:`~choco.errors.AgreementError` naming it.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from mpi4py import MPI

from choco.comm.local import LocalNetwork
from choco.comm.mpi import MPICommunicator
from choco.compress import make_compressor
from choco.errors import AgreementError
from choco.gossip import ChocoGossip, lockstep
from topologies import parse_topology

STEPS = 25
DIM = 37
CASES = [("identity", 1.0), ("sign", 0.4), ("topk:0.2", 0.3)]


def topologies_for(n: int) -> list[str]:
    specs = [f"ring:{n}"]
    if n >= 3:
        specs += [f"star:{n}", f"complete:{n}"]
    if n in (4, 8):
        specs.append(f"torus:{n}")
    return specs


def run(nodes, W, spec, gamma, x0):
    gs = [ChocoGossip(c, W[c.rank], make_compressor(spec), gamma, seed=7) for c in nodes]
    xs = [torch.from_numpy(x0[c.rank].copy()) for c in nodes]
    lockstep(gs, xs, STEPS)  # under MPI each rank holds one node: begin, then finish
    return [(x.numpy(), g.state.x_hat.numpy(), g.state.s.numpy())
            for g, x in zip(gs, xs, strict=True)]


def lgc_switch_fault(world, warmup: int = 2) -> str:
    """Gossip ``lgc`` on a ring across its switch with the last rank's broadcast corrupted;
    return what this rank raised (the error text, or ``"no error"``)."""
    rank, n = world.Get_rank(), world.Get_size()
    topo = parse_topology(f"ring:{n}")
    comm = MPICommunicator(topo.neighbors(rank))
    if rank == n - 1:
        honest = comm.broadcast

        def corrupted(array, root=0):
            got = np.array(honest(array, root), copy=True)
            got[0] += 1.0
            return got

        comm.broadcast = corrupted
    gossip = ChocoGossip(comm, topo.W[rank], make_compressor(f"lgc:warmup={warmup}"), 0.05)
    x = torch.from_numpy(np.random.default_rng(rank).standard_normal(300).astype(np.float32))
    try:
        for _ in range(warmup + 1):
            gossip.step(x)
    except AgreementError as exc:
        return f"AgreementError: {exc}"
    return "no error"


def main() -> None:
    world = MPI.COMM_WORLD
    rank, n = world.Get_rank(), world.Get_size()
    checks: dict[str, list] = {}
    for tspec in topologies_for(n):
        topo = parse_topology(tspec)
        W = topo.W
        x0 = np.random.default_rng(3).standard_normal((n, DIM))
        comm = MPICommunicator(topo.neighbors(rank))
        for spec, gamma in CASES:
            (x, x_hat, s), = run([comm], W, spec, gamma, x0)
            X = world.gather(x, root=0)
            XH = world.gather(x_hat, root=0)
            S = world.gather(s, root=0)
            if rank != 0:
                continue
            X, XH, S = np.stack(X), np.stack(XH), np.stack(S)
            local = run(LocalNetwork.from_matrix(W).comms, W, spec, gamma, x0)
            LX = np.stack([r[0] for r in local])
            key = f"{tspec}/{spec}"
            checks[f"{key}/mpi_equals_local"] = [bool(np.array_equal(X, LX)),
                                                  float(np.abs(X - LX).max())]
            err = float(np.abs(S - W @ XH).max())
            checks[f"{key}/copy_identity"] = [err < 1e-12, err]
            err = float(np.abs(X.mean(0) - x0.mean(0)).max())
            checks[f"{key}/mean_preserved"] = [err < 1e-12, err]
            if spec == "identity":
                ref = np.linalg.matrix_power(W, STEPS) @ x0
                err = float(np.abs(X - ref).max())
                checks[f"{key}/exact_gossip"] = [err < 1e-12, err]
    said = world.gather(lgc_switch_fault(world), root=0)
    if rank == 0:
        named = all(m.startswith("AgreementError") and f"ranks [{n - 1}]" in m for m in said)
        checks["lgc_switch_agreement"] = [named, said]
        with open(sys.argv[1], "w") as fh:
            json.dump({"size": n, "checks": checks}, fh, indent=1)


if __name__ == "__main__":
    main()

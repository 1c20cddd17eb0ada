"""CHOCO-Gossip with the model on the GPU and messages over NCCL (2 ranks, 2 GPUs).

Run as ``torchrun --standalone --nproc-per-node 2 tests/torchrun/nccl_check.py OUT.json
[DEVICE]``; DEVICE is ``cuda`` (NCCL, the default) or ``cpu`` (gloo: the same checks on a
machine without GPUs). Rank 0 writes ``{"backend", "device", "checks": {name: [ok,
detail]}}``:

* ``<compressor>/equals_cpu_local``: x on every node after the rounds equals the in-process
  CPU network's up to float rounding (the device kernels may round differently);
* ``<compressor>/mean_preserved``, ``<compressor>/converges``;
* ``collectives/*``: allreduce / allgather / broadcast through device buffers are exact.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from choco.comm.local import LocalNetwork
from choco.compress import make_compressor
from choco.gossip import ChocoGossip, lockstep
from choco.run.launch import init_from_env, run_torch
from topologies import parse_topology

STEPS = 30
DIM = 200
CASES = [("identity", 1.0), ("sign", 0.5), ("topk:0.1", 0.3), ("randk:0.2", 0.2)]


def main() -> int:
    device = sys.argv[2] if len(sys.argv) > 2 else "cuda"
    launch = init_from_env(device=device, timeout_s=120)
    rank, n = launch.rank, launch.size
    topo = parse_topology(f"ring:{n}")
    W = topo.W
    comm = launch.communicator(topo.neighbors(rank))
    checks: dict[str, list] = {}
    checks["transport"] = [comm.device == launch.comm_device, str(comm.device)]
    x0 = np.random.default_rng(11).standard_normal((n, DIM)).astype(np.float32)
    for spec, gamma in CASES:
        g = ChocoGossip(comm, W[rank], make_compressor(spec), gamma, seed=5)
        x = torch.from_numpy(x0[rank].copy()).to(launch.device)
        for _ in range(STEPS):
            g.step(x)
        assert x.device == launch.device
        X = comm.allgather(x.cpu().numpy())
        if rank != 0:
            continue
        nodes = LocalNetwork.from_matrix(W).comms
        gs = [ChocoGossip(c, W[c.rank], make_compressor(spec), gamma, seed=5) for c in nodes]
        xs = [torch.from_numpy(x0[c.rank].copy()) for c in nodes]
        lockstep(gs, xs, STEPS)
        LX = np.stack([v.numpy() for v in xs])
        err = float(np.abs(X - LX).max())
        checks[f"{spec}/equals_cpu_local"] = [err < 1e-3, err]
        err = float(np.abs(X.mean(0) - x0.mean(0)).max())
        checks[f"{spec}/mean_preserved"] = [err < 1e-4, err]
        before = float(((x0 - x0.mean(0)) ** 2).sum())
        after = float(((X - X.mean(0)) ** 2).sum())
        checks[f"{spec}/converges"] = [after < 0.5 * before, [before, after]]
    vals = np.random.default_rng(rank).standard_normal(33)
    got = comm.allreduce(vals)
    parts = comm.allgather(vals)
    want = parts[0].copy()
    for p in parts[1:]:
        want += p
    checks["collectives/allreduce"] = [bool(np.array_equal(got, want)), None]
    checks["collectives/allgather"] = [bool(np.array_equal(parts[rank], vals)), None]
    b = comm.broadcast(vals, root=n - 1)
    checks["collectives/broadcast"] = [bool(np.array_equal(b, parts[n - 1])), None]
    comm.barrier()
    if rank == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump({"backend": launch.backend, "device": str(launch.device),
                       "checks": checks}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_torch(main))

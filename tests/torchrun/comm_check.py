"""Run under ``torchrun --standalone --nproc-per-node 4 tests/torchrun/comm_check.py OUT.json``.

Every rank runs the checks over :class:`choco.comm.torchdist.TorchCommunicator` (gloo);
rank 0 recomputes the references in-process and writes ``{"size": n, "checks": {name:
[ok, detail]}, "errors": {case: [[type, message] or None per rank]}}``:

* ``<topology>/<compressor>/torch_equals_local``: CHOCO-Gossip over torch.distributed gives
  the same x, x̂ and s on every node, bit for bit, as the in-process
  :class:`~choco.comm.LocalNetwork` (and the same bytes sent); ``copy_identity`` (s_i =
  Σ_j w_ij x̂_j) and ``mean_preserved`` too;
* ``collectives/*``: allreduce equals the rank-ordered numpy sum (and the in-process
  network's) bit for bit for float64/float32/int64/0-d arrays, allgather equals np.stack,
  broadcast from a non-zero root is exact, allgather_object, barrier;
* ``errors``: each start-up fault is provoked and must raise on *every* rank (the case
  after it only runs because every rank raised): a mismatched configuration
  (``check_agreement`` on ``TorchCommunicator([])``), differing initial tensors, an
  asymmetric and an invalid neighbour list, neighbours posting messages of different
  lengths; ``gossip_after`` checks that gossip still works afterwards.

The whole script runs under :func:`choco.run.launch.run_torch` (normal return: the
process group is destroyed and the exit status is 0).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from choco.comm import check_agreement
from choco.comm.local import LocalNetwork
from choco.comm.torchdist import TorchCommunicator
from choco.compress import make_compressor
from choco.gossip import ChocoGossip, lockstep
from choco.run.launch import init_from_env, launched_by_torchrun, run_torch
from topologies import parse_topology

STEPS = 20
DIM = 101
CASES = [("identity", 1.0), ("sign", 0.4), ("topk:0.05", 0.3), ("randk:0.2", 0.2),
         ("qsgd:16", 0.5), ("topk:0.1+natural", 0.3)]
CONFIG = {"topology": "ring:4", "compressor": "sign", "gamma": 0.5, "seed": 3,
          "model_args": {"width": 16}}


def topologies_for(n: int) -> list[str]:
    specs = [f"ring:{n}"]
    if n >= 3:
        specs.append(f"complete:{n}")
    if n == 4:
        specs.append("torus:2x2")
    return specs


def run(nodes, W, spec, gamma, x0):
    gs = [ChocoGossip(c, W[c.rank], make_compressor(spec), gamma, seed=7) for c in nodes]
    xs = [torch.from_numpy(x0[c.rank].copy()) for c in nodes]
    lockstep(gs, xs, STEPS)
    return ([(x.numpy(), g.state.x_hat.numpy(), g.state.s.numpy())
             for g, x in zip(gs, xs, strict=True)], [g.bytes_sent for g in gs])


def outcome(fn) -> list | None:
    try:
        fn()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None


def gossip_checks(comm0: TorchCommunicator, rank: int, n: int, checks: dict) -> None:
    for tspec in topologies_for(n):
        topo = parse_topology(tspec)
        W = topo.W
        x0 = np.random.default_rng(3).standard_normal((n, DIM)).astype(np.float32)
        comm = TorchCommunicator(topo.neighbors(rank))
        for spec, gamma in CASES:  # one communicator, messages of several sizes
            ((x, x_hat, s),), (sent,) = run([comm], W, spec, gamma, x0)
            X, XH, S = (comm0.allgather(a) for a in (x, x_hat, s))
            sent_all = comm0.allgather(np.array([sent], dtype=np.int64))[:, 0].tolist()
            if rank != 0:
                continue
            local, local_sent = run(LocalNetwork.from_matrix(W).comms, W, spec, gamma, x0)
            LX, LXH, LS = (np.stack([r[i] for r in local]) for i in range(3))
            key = f"{tspec}/{spec}"
            same = all(np.array_equal(a, b) for a, b in ((X, LX), (XH, LXH), (S, LS)))
            checks[f"{key}/torch_equals_local"] = [
                bool(same and sent_all == local_sent),
                [float(np.abs(X - LX).max()), sent_all, local_sent]]
            err = float(np.abs(S.astype(np.float64) - W @ XH.astype(np.float64)).max())
            checks[f"{key}/copy_identity"] = [err < 1e-5, err]
            err = float(np.abs(X.mean(0) - x0.mean(0)).max())
            checks[f"{key}/mean_preserved"] = [err < 1e-5, err]


def collective_checks(comm: TorchCommunicator, rank: int, n: int, checks: dict) -> None:
    def per_rank(r: int, dtype, shape=(257,)):
        gen = np.random.default_rng(100 + r)
        if np.dtype(dtype).kind == "f":
            return (gen.standard_normal(shape) * 10.0 ** gen.integers(-8, 8, shape)).astype(dtype)
        return gen.integers(-(2**40), 2**40, shape).astype(dtype)

    def ordered_sum(parts):
        out = parts[0].copy()
        for p in parts[1:]:
            out += p
        return out

    local_net = LocalNetwork([[] for _ in range(n)])
    for dtype in (np.float64, np.float32, np.int64):
        name = np.dtype(dtype).name
        got = comm.allreduce(per_rank(rank, dtype))
        want = ordered_sum([per_rank(r, dtype) for r in range(n)])
        local = local_net.run(lambda c, dtype=dtype: c.allreduce(per_rank(c.rank, dtype)))[0]
        checks[f"collectives/allreduce_{name}"] = [
            bool(got.dtype == want.dtype and np.array_equal(got, want)
                 and np.array_equal(got, local)), float(np.abs(got - want).max())]
    got0 = comm.allreduce(np.float64(rank + 0.1))
    want0 = ordered_sum([np.float64(r + 0.1) for r in range(n)])
    checks["collectives/allreduce_0d"] = [bool(np.shape(got0) == () and got0 == want0),
                                          [float(got0), float(want0)]]
    got = comm.allgather(per_rank(rank, np.float32, (3, 5)))
    want = np.stack([per_rank(r, np.float32, (3, 5)) for r in range(n)])
    checks["collectives/allgather"] = [bool(got.shape == (n, 3, 5)
                                            and np.array_equal(got, want)), list(got.shape)]
    root = n - 1
    got = comm.broadcast(per_rank(rank, np.float64, (2, 9)), root=root)
    checks["collectives/broadcast"] = [bool(np.array_equal(got, per_rank(root, np.float64,
                                                                         (2, 9)))), root]
    objs = comm.allgather_object({"rank": rank, "tag": f"r{rank}"})
    checks["collectives/allgather_object"] = [
        objs == [{"rank": r, "tag": f"r{r}"} for r in range(n)], objs]
    comm.barrier()
    checks["collectives/barrier"] = [True, None]


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def gossip_round(comm: TorchCommunicator, rank: int, spec: str, dim: int = 40) -> None:
    topo = parse_topology("ring:4")
    g = ChocoGossip(comm, topo.W[rank], make_compressor(spec), 0.5, seed=1)
    g.step(torch.randn(dim, generator=torch.Generator().manual_seed(rank)))


def error_cases(empty: TorchCommunicator, rank: int) -> dict:
    ring = parse_topology("ring:4")
    results: dict[str, list | None] = {}

    def agree() -> None:
        check_agreement(empty, config=CONFIG, tensors=model().parameters())
        check_agreement(TorchCommunicator(ring.neighbors(rank)), config=CONFIG,
                        tensors=model().state_dict(), what="test")

    results["agree"] = outcome(agree)
    results["config"] = outcome(lambda: check_agreement(
        empty, config=dict(CONFIG, topology="ring:4" if rank < 2 else "complete:4")))
    m = model()
    if rank == 3:
        with torch.no_grad():
            m[2].weight[0, 5] += 1e-6
    results["tensors"] = outcome(lambda: check_agreement(
        empty, config=CONFIG, tensors=m.state_dict()))
    nb = [j for j in ring.neighbors(rank) if not (rank == 3 and j == 0)]
    results["asymmetric"] = outcome(lambda: TorchCommunicator(nb))
    results["invalid"] = outcome(lambda: TorchCommunicator(
        [2, 3] if rank == 2 else ring.neighbors(rank)))
    results["lengths"] = outcome(lambda: gossip_round(
        TorchCommunicator(ring.neighbors(rank)), rank, "topk:0.5" if rank == 3 else "sign"))
    results["gossip_after"] = outcome(lambda: gossip_round(
        TorchCommunicator(ring.neighbors(rank)), rank, "sign"))
    return results


def main() -> int:
    launch = init_from_env(timeout_s=120)
    rank, n = launch.rank, launch.size
    empty = launch.communicator()
    checks: dict[str, list] = {}
    checks["launch"] = [launched_by_torchrun() and launch.backend == "gloo"
                        and str(launch.device) == "cpu" and empty.neighbors == [],
                        [launch.backend, str(launch.device)]]
    gossip_checks(empty, rank, n, checks)
    collective_checks(empty, rank, n, checks)
    errors = error_cases(empty, rank) if n == 4 else {}
    gathered = empty.allgather_object(errors)
    if rank == 0:
        by_case = {case: [g[case] for g in gathered] for case in errors}
        with open(sys.argv[1], "w") as fh:
            json.dump({"size": n, "checks": checks, "errors": by_case}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_torch(main))

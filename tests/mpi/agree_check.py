"""Run under ``mpiexec -n 4 python -m mpi4py tests/mpi/agree_check.py OUT.json``.

Every start-up fault that must raise *on every rank* (so nothing hangs) is provoked in turn;
each rank catches its error and goes on to the next case, which is only safe because every
rank raised (or none did). Rank 0 writes ``{case: [[type, message] or None per rank]}``:

* ``agree``: equal configuration and parameters pass, on ``MPICommunicator([], world)``
  (no neighbours) and on a gossip communicator;
* ``config``: ranks 0-1 run ``ring:4``, ranks 2-3 ``complete:4``;
* ``config_large``: a configuration above the inline limit differs on rank 3 (second
  collective);
* ``tensors``: rank 3's initial model differs in one weight;
* ``asymmetric``: rank 3 does not list rank 0 as a neighbour;
* ``invalid``: rank 2 lists itself;
* ``lengths``: rank 3 sends ``topk:0.5`` messages, the others ``sign``;
* ``codec``: rank 3 sends ``randblock:0.5`` (same length as ``randk:0.5``): its neighbours
  and rank 3 itself cannot decode what they receive, rank 1 can;
* ``gossip_after``: a normal CHOCO-Gossip run afterwards preserves the network mean.
"""

from __future__ import annotations

import json
import sys

import torch
from mpi4py import MPI

from choco.comm import check_agreement
from choco.comm.agree import INLINE_CONFIG_BYTES
from choco.comm.mpi import MPICommunicator
from choco.compress import make_compressor
from choco.gossip import ChocoGossip
from topologies import parse_topology

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()
CONFIG = {"topology": "ring:4", "compressor": "sign", "gamma": 0.5, "seed": 3,
          "model_args": {"width": 16}, "lr_milestones": [50, 75]}


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def outcome(fn) -> list | None:
    try:
        fn()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None


def gossip_round(comm: MPICommunicator, spec: str, dim: int = 40) -> None:
    topo = parse_topology("ring:4")
    g = ChocoGossip(comm, topo.W[RANK], make_compressor(spec), 0.5, seed=1)
    g.step(torch.randn(dim, generator=torch.Generator().manual_seed(RANK)))


def main() -> None:
    empty = MPICommunicator([], WORLD)
    ring = parse_topology("ring:4")
    results: dict[str, list] = {}

    def agree() -> None:
        check_agreement(empty, config=CONFIG, tensors=model().parameters())
        check_agreement(MPICommunicator(ring.neighbors(RANK), WORLD), config=CONFIG,
                        tensors=model().state_dict(), what="test")

    results["agree"] = outcome(agree)
    results["config"] = outcome(lambda: check_agreement(
        empty, config=dict(CONFIG, topology="ring:4" if RANK < 2 else "complete:4")))
    blob = list(range(INLINE_CONFIG_BYTES))
    if RANK == 3:
        blob[1234] = -1
    results["config_large"] = outcome(lambda: check_agreement(
        empty, config=dict(CONFIG, blob=blob)))
    m = model()
    if RANK == 3:
        with torch.no_grad():
            m[2].weight[0, 5] += 1e-6
    results["tensors"] = outcome(lambda: check_agreement(
        empty, config=CONFIG, tensors=m.state_dict()))
    nb = [j for j in ring.neighbors(RANK) if not (RANK == 3 and j == 0)]
    results["asymmetric"] = outcome(lambda: MPICommunicator(nb, WORLD))
    results["invalid"] = outcome(lambda: MPICommunicator(
        [2, 3] if RANK == 2 else ring.neighbors(RANK), WORLD))
    results["lengths"] = outcome(lambda: gossip_round(
        MPICommunicator(ring.neighbors(RANK), WORLD), "topk:0.5" if RANK == 3 else "sign"))
    results["codec"] = outcome(lambda: gossip_round(
        MPICommunicator(ring.neighbors(RANK), WORLD),
        "randblock:0.5" if RANK == 3 else "randk:0.5"))

    def gossip_after() -> None:
        comm = MPICommunicator(ring.neighbors(RANK), WORLD)
        g = ChocoGossip(comm, ring.W[RANK], make_compressor("sign"), 0.5, seed=2)
        x = torch.full((32,), float(RANK), dtype=torch.float64)
        for _ in range(20):
            g.step(x)
        mean = comm.allreduce(x.numpy())[0] / comm.size
        if abs(mean - 1.5) > 1e-12:
            raise AssertionError(f"mean moved to {mean}")

    results["gossip_after"] = outcome(gossip_after)
    gathered = WORLD.gather(results, root=0)
    if RANK == 0:
        table = {case: [r[case] for r in gathered] for case in results}
        with open(sys.argv[1], "w") as fh:
            json.dump({"size": WORLD.Get_size(), "cases": table}, fh, indent=1)


if __name__ == "__main__":
    main()

"""A minimal gossip program for MPMD fault launches: every fault must end the job fast.

Run as, e.g., ``mpiexec -n 2 python tests/mpi/agree_fault.py --topology ring:4 :
-n 2 python tests/mpi/agree_fault.py --topology complete:4``. Each rank checks that all
ranks agree on the configuration and the initial model (one collective on a communicator
without neighbours), builds its gossip communicator from the topology (the neighbour lists
are checked), then runs CHOCO-Gossip for ``--steps`` rounds. Errors go through
``choco.run.cli.run_mpi``: ``error: ...`` on stderr, and the whole job aborts.

Fault injections (not part of the compared configuration): ``--perturb-model`` changes one
initial weight, ``--drop-neighbour J`` removes rank J from this rank's neighbour list,
``--exchange-compressor SPEC`` encodes with another compressor than configured.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> int:
    from mpi4py import MPI

    from choco.comm import check_agreement
    from choco.comm.mpi import MPICommunicator
    from choco.compress import make_compressor
    from choco.gossip import ChocoGossip
    from topologies import parse_topology

    p = argparse.ArgumentParser()
    p.add_argument("--topology", default="ring:4")
    p.add_argument("--compressor", default="sign")
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--perturb-model", action="store_true")
    p.add_argument("--drop-neighbour", type=int, default=None)
    p.add_argument("--exchange-compressor", default=None)
    args = p.parse_args()
    config = {k: getattr(args, k) for k in ("topology", "compressor", "gamma", "steps", "seed")}

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    if args.perturb_model:
        with torch.no_grad():
            model[0].weight[3, 4] += 1e-3
    check_agreement(MPICommunicator([], world), config=config, tensors=model.state_dict())

    topo = parse_topology(args.topology)
    neighbors = [j for j in topo.neighbors(rank) if j != args.drop_neighbour]
    comm = MPICommunicator(neighbors, world)
    compressor = make_compressor(args.exchange_compressor or args.compressor)
    gossip = ChocoGossip(comm, topo.W[rank], compressor, args.gamma, seed=args.seed)
    x = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    for _ in range(args.steps):
        gossip.step(x)
    if rank == 0:
        print(f"ok: {args.steps} rounds on {args.topology}", flush=True)
    return 0


if __name__ == "__main__":
    from choco.run.cli import run_mpi

    sys.exit(run_mpi(main))

"""``python -m choco.consensus``: CHOCO-Gossip alone, the average-consensus experiment.

Every node ``i`` starts from row ``i`` of an ``(n, d)`` array ``X0`` and runs ``T`` rounds of
CHOCO-Gossip (Alg. 1 of arXiv:1902.00340); the nodes should agree on the mean ``x̄⁰`` of the
rows. The output ``.npz`` holds

* ``x``: the final ``(n, d)`` array,
* ``error``: length ``T + 1``, ``error_t = (1/n) Σ_i ||x_i^t - x̄⁰||²``,
* ``bytes_sent``: length ``n``, payload bytes each node put on the wire (message length ×
  number of neighbours, summed over rounds).

Local run (all nodes in one process)::

    python -m choco.consensus --topology ring:8 --compressor sign --gamma 0.5 \\
        --steps 500 --init X0.npy --out out.npz

MPI run (one rank per node, same result)::

    mpiexec -n 8 python -m choco.consensus --backend mpi --topology ring:8 ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cli import UsageError, load_npy, refuse_local_under_mpi, run_local, run_mpi
from .comm.base import Communicator
from .compress import CompressionError, make_compressor
from .gossip import ChocoGossip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """A validated consensus problem, identical on every rank."""

    topology: object  # topologies.Topology
    compressor_spec: str
    gamma: float
    steps: int
    seed: int
    x0: np.ndarray


@dataclass
class NodeResult:
    x: np.ndarray
    error: np.ndarray  # ||x_i^t - x̄⁰||², t = 0..T
    bytes_sent: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m choco.consensus",
        description="Run CHOCO-Gossip average consensus (arXiv:1902.00340) on a topology.",
    )
    p.add_argument("--topology", required=True, help="ring:8, torus:4x4, social, er:16:0.3, ...")
    p.add_argument("--mixing", default="metropolis", help="metropolis | maxdegree | uniform")
    p.add_argument("--compressor", required=True, help="identity, sign, topk:0.01, ...")
    p.add_argument("--gamma", type=float, required=True, help="consensus step size in (0, 1]")
    p.add_argument("--steps", type=int, required=True, help="number of gossip rounds T")
    p.add_argument("--init", required=True, help="(n, d) .npy array, row i = node i's vector")
    p.add_argument("--out", required=True, help="output .npz (x, error, bytes_sent)")
    p.add_argument("--backend", choices=("local", "mpi"), default="local")
    p.add_argument("--seed", type=int, default=0, help="base seed of the compressors")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def load_problem(args: argparse.Namespace) -> Problem:
    """Validate every input before anything runs or is written."""
    from topologies import TopologyError, parse_topology

    try:
        topology = parse_topology(args.topology, args.mixing)
    except TopologyError as exc:
        raise UsageError(str(exc)) from None
    try:
        make_compressor(args.compressor)
    except CompressionError as exc:
        raise UsageError(str(exc)) from None
    if not 0.0 < args.gamma <= 1.0:
        raise UsageError(
            f"--gamma must be in (0, 1], got {args.gamma}; typical values are 1 for identity, "
            "0.5 for sign, 0.05 for topk:0.01."
        )
    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}.")
    path = Path(args.init)
    x0 = load_npy(path, "--init", "an (n, d) array",
                  "numpy.save('X0.npy', numpy.random.randn(n, d))")
    n = topology.n  # type: ignore[attr-defined]
    if x0.ndim != 2 or x0.shape[0] != n:
        raise UsageError(
            f"--init must hold an (n, d) array with one row per node (n = {n} for "
            f"{args.topology}), got shape {x0.shape}; save numpy.random.randn({n}, d)."
        )
    if x0.dtype not in (np.float32, np.float64):
        raise UsageError(
            f"--init must be float32 or float64 (computation uses its dtype), got {x0.dtype}; "
            "convert with x.astype(numpy.float32)."
        )
    if not np.isfinite(x0).all():
        raise UsageError(f"--init {path} holds NaN or Inf; every entry must be finite.")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist; create it first.")
    return Problem(topology, args.compressor, args.gamma, args.steps, args.seed, x0)


def progress_points(steps: int, count: int = 10) -> set[int]:
    """Rounds after which progress is reported (the same on every rank)."""
    return {round(steps * k / count) for k in range(1, count + 1)} - {0}


def run_node(comm: Communicator, problem: Problem, report: bool) -> NodeResult:
    """The per-node program, identical for the local and the MPI backend."""
    topo = problem.topology
    i = comm.rank
    x = torch.from_numpy(problem.x0[i].copy())
    xbar0 = torch.from_numpy(problem.x0.mean(axis=0))
    gossip = ChocoGossip(
        comm, topo.row(i), make_compressor(problem.compressor_spec),  # type: ignore[attr-defined]
        problem.gamma, seed=problem.seed,
    )
    error = np.empty(problem.steps + 1)
    error[0] = float(((x - xbar0) ** 2).sum())
    points = progress_points(problem.steps)
    for t in range(1, problem.steps + 1):
        gossip.step(x)
        error[t] = float(((x - xbar0) ** 2).sum())
        if t in points:
            total = comm.allreduce(np.array([error[t], error[0]]))
            if report and comm.rank == 0:
                print(
                    f"step {t:>6}/{problem.steps}  error {total[0] / comm.size:.4e}  "
                    f"(x{total[1] / max(total[0], 1e-300):.3g} reduction)",
                    flush=True,
                )
    return NodeResult(x.numpy(), error, gossip.bytes_sent)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically: a temporary file in the same directory, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarize(problem: Problem, results: list[NodeResult], out: Path, as_json: bool) -> None:
    x = np.stack([r.x for r in results])
    error = np.sum(np.stack([r.error for r in results]), axis=0) / len(results)
    bytes_sent = np.array([r.bytes_sent for r in results], dtype=np.int64)
    write_npz(out, x=x, error=error, bytes_sent=bytes_sent)
    reduction = error[0] / error[-1] if error[-1] > 0 else float("inf")
    print(
        f"{problem.compressor_spec} on {problem.topology.spec} "  # type: ignore[attr-defined]
        f"(gamma {problem.gamma}, {problem.steps} steps): error {error[0]:.4e} -> "
        f"{error[-1]:.4e} (x{reduction:.3g} reduction), {bytes_sent.mean():.0f} bytes sent "
        f"per node; wrote {out}",
        flush=True,
    )
    if as_json:
        print(json.dumps({
            "topology": problem.topology.spec,  # type: ignore[attr-defined]
            "compressor": problem.compressor_spec, "gamma": problem.gamma,
            "steps": problem.steps, "error_initial": float(error[0]),
            "error_final": float(error[-1]), "reduction": float(reduction),
            "bytes_per_node": float(bytes_sent.mean()), "out": str(out),
        }))


def main_local(args: argparse.Namespace) -> int:
    refuse_local_under_mpi()
    problem = load_problem(args)
    from .comm.local import LocalNetwork

    net = LocalNetwork([problem.topology.neighbors(i)  # type: ignore[attr-defined]
                        for i in range(problem.topology.n)])  # type: ignore[attr-defined]
    torch.set_num_threads(1)  # one thread per node already
    results = net.run(lambda comm: run_node(comm, problem, report=not args.quiet))
    summarize(problem, results, Path(args.out), args.json)
    return 0


def main_mpi(args: argparse.Namespace) -> int:
    from .comm.mpi import MPICommunicator, world_size

    problem = load_problem(args)
    n = problem.topology.n  # type: ignore[attr-defined]
    if world_size() != n:
        raise UsageError(
            f"the topology {args.topology} has n = {n} nodes, so mpiexec -n {n} is required; "
            f"got {world_size()} ranks. Relaunch with mpiexec -n {n} or change --topology."
        )
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    comm = MPICommunicator(problem.topology.neighbors(rank))  # type: ignore[attr-defined]
    result = run_node(comm, problem, report=not args.quiet)
    xs = comm.allgather(result.x)
    errors = comm.allgather(result.error)
    sent = comm.allgather(np.array([result.bytes_sent], dtype=np.int64))[:, 0]
    if rank == 0:
        results = [NodeResult(xs[i], errors[i], int(sent[i])) for i in range(n)]
        summarize(problem, results, Path(args.out), args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.backend == "mpi":
        return run_mpi(lambda: main_mpi(args))
    return run_local(lambda: main_local(args))


if __name__ == "__main__":
    sys.exit(main())

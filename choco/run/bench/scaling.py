"""``python -m choco.bench scaling``: cost of a consensus round against n and d, in-process.

All ``n`` nodes of a ring (``--family``) run in this process on a
:class:`~choco.comm.LocalNetwork`, driven by :func:`choco.gossip.lockstep` (every node's
``begin``, then every node's ``finish``, one thread). A round does ``n`` encodes, ``n (1 +
deg)`` decodes and ``n`` consensus updates of ``d`` entries each, so its cost should grow
linearly in ``n·d``. The benchmark times one round (median of ``--rounds``) along two lines of
the (n, d) plane, ``n`` varying at ``d = --fixed-numel`` and ``d`` varying at
``n = --fixed-nodes``, and fits the log-log slopes ``∂ log t / ∂ log n`` and
``∂ log t / ∂ log d`` (least squares; 1 each for a cost linear in ``n·d``). Every point is
checked against the available memory before it is allocated; points that do not fit are
skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import numpy as np
import torch

from ...compress.base import Compressor
from ...errors import UsageError
from ...gossip import ChocoGossip, lockstep
from .gossip import check_positive, machine_line, memory_problem, node_memory
from .specs import TRAIN, parse_specs

HELP = "in-process consensus round time against n and d, with fitted log-log slopes"



def _node_bytes(numel: int, degree: int, q: Compressor) -> int:
    """One in-process node's memory for ``q`` (no dense all-reduce buffers)."""
    return node_memory(numel, degree, [q], 0)

def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"{what} must be a comma-separated list of positive integers, "
                         f"got {text!r}; e.g. {what} 2,4,8.")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--specs", default=",".join(TRAIN), help="comma-separated compressors")
    p.add_argument("--family", default="ring", help="topology family sized by n (ring, "
                   "torus, complete, ...)")
    p.add_argument("--nodes", default="2,4,8,16,32,64", help="n values (at --fixed-numel)")
    p.add_argument("--numels", default="100000,300000,1000000,3000000,10000000",
                   help="d values (at --fixed-nodes)")
    p.add_argument("--fixed-numel", type=int, default=1_000_000, help="d of the n sweep")
    p.add_argument("--fixed-nodes", type=int, default=8, help="n of the d sweep")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per point")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds per point")
    p.add_argument("--gamma", type=float, default=0.5, help="consensus step size γ")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: the lock step runs in one thread anyway)")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")


def time_round(family: str, n: int, numel: int, q, rounds: int, warmup: int,
               gamma: float) -> float:
    """Median seconds of one lock-step round of ``n`` nodes on ``family:n``, ``d = numel``."""
    from ...comm.local import LocalNetwork
    from ..plan import resolve_topology

    topo = resolve_topology(family, "metropolis", n)
    net = LocalNetwork([topo.neighbors(i) for i in range(n)])
    gossips = [ChocoGossip(c, topo.W[c.rank], q, gamma, seed=0) for c in net.comms]
    gen = torch.Generator().manual_seed(n)
    xs = [torch.randn(numel, generator=gen) for _ in range(n)]
    lockstep(gossips, xs, warmup)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        lockstep(gossips, xs, 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slope(xs: list[float], ts: list[float]) -> float:
    """Least-squares slope of ``log t`` against ``log x`` (NaN with fewer than 2 points)."""
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def run(args: argparse.Namespace) -> int:
    compressors = parse_specs(args.specs)
    nodes = _ints(args.nodes, "--nodes")
    numels = _ints(args.numels, "--numels")
    check_positive(("--rounds", args.rounds, 1, 3), ("--warmup", args.warmup, 0, 1),
                   ("--fixed-numel", args.fixed_numel, 1, 1_000_000),
                   ("--fixed-nodes", args.fixed_nodes, 2, 8), ("--threads", args.threads, 1, 1))
    from ..plan import resolve_topology

    resolve_topology(args.family, "metropolis", 4)  # a bad family fails before timing
    torch.set_num_threads(args.threads)
    points = [("n", n, args.fixed_numel) for n in nodes if n >= 2] + \
             [("d", args.fixed_nodes, d) for d in numels]
    rows, skipped = [], []
    for q in compressors:
        for axis, n, d in points:
            degree = len(resolve_topology(args.family, "metropolis", n).neighbors(0))
            problem = memory_problem(d, n + 1, partial(_node_bytes, degree=degree, q=q))
            if problem:
                skipped.append({"spec": q.spec, "n": n, "numel": d, "why": problem})
                continue
            t = time_round(args.family, n, d, q, args.rounds, args.warmup, args.gamma)
            rows.append({"spec": q.spec, "axis": axis, "n": n, "numel": d, "round_ms": 1e3 * t,
                         "ns_per_node_elem": 1e9 * t / (n * d)})
    slopes = []
    for q in compressors:
        by_n = [r for r in rows if r["spec"] == q.spec and r["axis"] == "n"]
        by_d = [r for r in rows if r["spec"] == q.spec and r["axis"] == "d"]
        slopes.append({
            "spec": q.spec,
            "slope_n": slope([r["n"] for r in by_n], [r["round_ms"] for r in by_n]),
            "slope_d": slope([r["numel"] for r in by_d], [r["round_ms"] for r in by_d]),
        })
    lines = [machine_line(None),
             f"in-process {args.family}:n, lock-step rounds (one thread), median of "
             f"{args.rounds}; n sweep at d = {args.fixed_numel:,}, d sweep at "
             f"n = {args.fixed_nodes}", "",
             "| spec | sweep | n | d | round ms | ns per node·element |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['spec']}` | {r['axis']} | {r['n']} | {r['numel']:,} | "
                     f"{r['round_ms']:.2f} | {r['ns_per_node_elem']:.2f} |")
    lines += ["", "fitted log-log slopes (1 = linear):", "",
              "| spec | slope vs n | slope vs d |", "|---|---:|---:|"]
    for s in slopes:
        lines.append(f"| `{s['spec']}` | {s['slope_n']:.3f} | {s['slope_d']:.3f} |")
    for s in skipped:
        lines.append(f"skipped {s['spec']} n={s['n']} d={s['numel']:,}: {s['why']}")
    print("\n".join(lines), flush=True)
    if args.json:
        print(json.dumps({"family": args.family, "rows": rows, "slopes": slopes,
                          "skipped": skipped}), flush=True)
    return 0

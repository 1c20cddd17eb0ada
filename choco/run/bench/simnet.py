"""``python -m choco.bench simnet``: how far the in-process network scales, and what its
simulated clock costs.

Measurements, each in a fresh subprocess of this Python (so peak memory is the run's own),
printed side by side:

* a consensus of ``--consensus-nodes`` nodes (ring, each codec of ``--spec``, sign by
  default, ``d = --dim``, ``--rounds`` rounds, γ = 0.5): host seconds of the default driver
  (one thread for every node, batched for sign, identity, topk:R, randk:R and randblock:R),
  of one thread per node (``--threads``), and with ``--before TREE`` of the same command on
  another checkout;
  their ``.npz`` files (x, error, bytes) must be identical;
* the clock's cost: ``--pairs`` interleaved pairs of the default driver without and with
  ``--network`` (same driver, same command otherwise), its overhead the median over the
  pairs of ``clocked / plain − 1``, for the whole process (what a user waits for,
  start-up included) and for the rounds alone (the driver called in this process);
* ``choco-train --backend local`` of ``--train-nodes`` nodes (the digits MLP, one epoch, ring,
  sign, γ = 0.5): peak resident memory (``ru_maxrss`` of the child) and host seconds.

Host times depend on the machine and its load (the line ``load`` shows the 1-minute load
average before and after); the ratios in one run are the comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .gossip import machine_line

HELP = "in-process network at scale: consensus time with/without the clock, training memory"

NETWORK = "bandwidth=1g,latency=50us,compute=1ms"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--consensus-nodes", default="256,1024", help="n of the consensus runs")
    p.add_argument("--train-nodes", default="256", help="n of the training runs (0: none)")
    p.add_argument("--dim", type=int, default=1000, help="d of the consensus")
    p.add_argument("--rounds", type=int, default=100, help="consensus rounds")
    p.add_argument("--spec", default="sign", metavar="SPEC[;SPEC...]",
                   help="the consensus runs' codecs (choco-consensus --compressor), a row "
                   "each; several separated by ';'")
    p.add_argument("--network", default=NETWORK, help="the simulated network of the clocked "
                   "runs")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    p.add_argument("--before", default="", metavar="TREE",
                   help="also run the plain consensus with PYTHONPATH=TREE (a checkout of "
                   "the code before a change), side by side in the same run")
    p.add_argument("--pairs", type=int, default=3,
                   help="interleaved runs without/with the clock (the overhead is the median "
                   "ratio of the pairs)")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")


#: runs ``python -m MODULE ARGS`` and reports the process's own peak RSS on stderr
_WRAP = """
import resource, runpy, sys
module, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"PEAK_KIB {peak}", file=sys.stderr, flush=True)
    choco = sys.modules.get("choco")
    print(f"CHOCO_FROM {getattr(choco, '__file__', '')}", file=sys.stderr, flush=True)
"""


def _child(argv: list[str], timeout: float, tree: str = "") -> dict:
    """Run ``python -m ARGV`` alone (with ``PYTHONPATH=tree`` if given); its host seconds,
    peak resident MiB and JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if tree:  # ``python -c`` puts its working directory first on sys.path: run in the tree
        env["PYTHONPATH"] = tree
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *argv], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tree or None)
    seconds = time.perf_counter() - start
    source = [line.split(" ", 1)[1] for line in proc.stderr.splitlines()
              if line.startswith("CHOCO_FROM ")]
    if tree and not (source and source[-1]
                     and Path(source[-1]).resolve().is_relative_to(Path(tree).resolve())):
        raise RuntimeError(f"the run meant for {tree} imported choco from {source[-1:] or '?'} "
                           "(none: not found); pass the root of a checkout (the folder "
                           f"holding choco/).\n{proc.stderr[-1000:]}")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines()
            if line.startswith("PEAK_KIB ")]
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return {"seconds": seconds, "peak_mib": peak[-1] / 1024 if peak else float("nan"),
            "summary": json.loads(last)}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip() and int(v) > 0]


def _same_npz(a: str, b: str) -> bool:
    """Whether two consensus outputs hold the same arrays, bit for bit."""
    import numpy as np

    with np.load(a) as x, np.load(b) as y:
        return sorted(x.files) == sorted(y.files) and all(
            x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes() for k in x.files)


def _consensus(args: argparse.Namespace, spec: str, n: int, tmp: str) -> dict:
    """The consensus row of ``n`` nodes with codec ``spec`` (see the module docstring)."""
    def base(out: str) -> list[str]:
        return ["choco.consensus", "--topology", f"ring:{n}", "--compressor", spec,
                "--gamma", "0.5", "--dim", str(args.dim), "--steps", str(args.rounds),
                "--quiet", "--json", "--overwrite", "--out", f"{tmp}/{out}-{n}.npz"]

    before = _child(base("before"), args.timeout, args.before) if args.before else None
    threads = _child([*base("threads"), "--threads"], args.timeout)
    plain, clocked = [], []
    for k in range(max(1, args.pairs)):  # interleaved, alternating which runs first
        for clock in ((False, True) if k % 2 == 0 else (True, False)):
            if clock:
                clocked.append(_child([*base("clocked"), "--network", args.network],
                                      args.timeout))
            else:
                plain.append(_child(base("plain"), args.timeout))
    for name, other in (("before", before), ("threads", threads)):
        if other is not None and not _same_npz(f"{tmp}/{name}-{n}.npz", f"{tmp}/plain-{n}.npz"):
            raise RuntimeError(f"consensus of {n} nodes: the {name} run's x, error or bytes "
                               f"differ from the default driver's ({other['summary']} vs "
                               f"{plain[-1]['summary']})")
    if clocked[-1]["summary"]["error_final"] != plain[-1]["summary"]["error_final"]:
        raise RuntimeError(f"consensus of {n} nodes: the clocked run's error differs")
    ratios = [c["seconds"] / p["seconds"] for p, c in zip(plain, clocked, strict=True)]
    return {"what": "consensus", "n": n, "spec": spec,
            "plain_s": statistics.median(p["seconds"] for p in plain),
            "threads_s": threads["seconds"],
            "before_s": None if before is None else before["seconds"],
            "clocked_s": statistics.median(c["seconds"] for c in clocked),
            "overhead": statistics.median(ratios) - 1,
            "plain_runs": [p["seconds"] for p in plain],
            "clocked_runs": [c["seconds"] for c in clocked],
            "sim_time_s": clocked[-1]["summary"].get("sim_time_s"),
            "peak_mib": plain[-1]["peak_mib"]}


def _rounds_only(args: argparse.Namespace, spec_text: str, n: int) -> list[float]:
    """``clocked / plain`` of the rounds alone (no start-up): the default one-thread driver
    of ``choco-consensus`` called in this process, after one warm-up run, ``--pairs``
    pairs without and with the clock (alternating which runs first); each pair's ratio."""
    import torch

    from ...comm.local import LocalNetwork
    from ...sim.clock import NetworkClock
    from ...sim.spec import parse_network
    from .. import consensus

    problem = consensus.load_problem(consensus.parse_args(
        ["--topology", f"ring:{n}", "--compressor", spec_text, "--gamma", "0.5", "--dim",
         str(args.dim), "--steps", str(args.rounds), "--quiet"]), report=False)
    topo = problem.topology
    neighbors = [topo.neighbors(i) for i in range(n)]
    spec = parse_network(args.network)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as choco-consensus --backend local
    ratios = []
    codec = consensus.batch_codec(problem.compressor, args.dim, torch.float64)
    if not consensus.lockstep_applies(problem, spec):
        raise RuntimeError(f"{spec_text}: no one-thread driver applies; choose another --spec")

    def seconds(clocked: bool) -> float:
        if codec is None:  # the per-node objects in lock-step
            net = LocalNetwork(neighbors, network=spec if clocked else None)
            start = time.perf_counter()
            consensus.run_lockstep(net.comms, problem, False, net.clock)
            return time.perf_counter() - start
        clock = NetworkClock(spec, neighbors) if clocked else None
        start = time.perf_counter()
        consensus.run_batched(problem, codec, False, clock)
        return time.perf_counter() - start

    try:
        seconds(False)  # warm-up: first allocations, lazy imports
        for k in range(max(1, args.pairs)):  # alternate which of the two runs first
            order = (False, True) if k % 2 == 0 else (True, False)
            took = dict(zip(order, (seconds(c) for c in order), strict=True))
            ratios.append(took[True] / took[False])
    finally:
        torch.set_num_threads(threads)
    return ratios


def run(args: argparse.Namespace) -> int:
    rows = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in [s.strip() for s in args.spec.split(";") if s.strip()]:
            for n in _ints(args.consensus_nodes):
                row = _consensus(args, spec, n, tmp)
                ratios = _rounds_only(args, spec, n)
                row["rounds_overhead"] = statistics.median(ratios) - 1
                row["rounds_ratios"] = ratios
                rows.append(row)
        for n in _ints(args.train_nodes):
            out = _child(["choco.train", "--backend", "local", "--nodes", str(n),
                          "--topology", "ring", "--epochs", "1", "--gamma", "0.5", "--quiet",
                          "--json", "--out", f"{tmp}/t{n}"], args.timeout)
            rows.append({"what": "train", "n": n, "plain_s": out["seconds"],
                         "peak_mib": out["peak_mib"]})
    load1 = os.getloadavg()[0]
    lines = [machine_line(None), f"load (1-min average) {load0:.1f} before, {load1:.1f} after; "
             f"clock: --network {args.network}; {max(1, args.pairs)} interleaved pairs "
             "without/with the clock (medians)", "",
             "| run | n | before s | threads s | host s | speed-up vs threads | "
             "host s with clock | clock overhead: process | rounds only | peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["what"] == "consensus":
            was = "" if r["before_s"] is None else f"{r['before_s']:.1f}"
            lines.append(f"| consensus ring {r['spec']} d={args.dim}, {args.rounds} rounds "
                         f"| {r['n']} "
                         f"| {was} | {r['threads_s']:.1f} | {r['plain_s']:.1f} | "
                         f"×{r['threads_s'] / r['plain_s']:.1f} | {r['clocked_s']:.1f} | "
                         f"{100 * r['overhead']:+.0f}% | {100 * r['rounds_overhead']:+.0f}% | "
                         f"{r['peak_mib']:.0f} |")
        else:
            lines.append(f"| choco-train digits MLP, 1 epoch | {r['n']} | | | "
                         f"{r['plain_s']:.1f} | | | | | {r['peak_mib']:.0f} |")
    print("\n".join(lines), flush=True)
    if args.json:
        print(json.dumps({"rows": rows, "load": [load0, load1]}), flush=True)
    return 0

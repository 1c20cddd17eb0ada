"""``python -m choco.bench simnet``: how far the in-process network scales, and what its
simulated clock costs.

Three measurements, each in a fresh subprocess of this Python (so peak memory is the run's
own), printed side by side:

* a consensus of ``--consensus-nodes`` nodes (ring, sign, ``d = --dim``, ``--rounds``
  rounds, γ = 0.5): host seconds without and with ``--network`` (the clock's overhead is the
  ratio of the two, measured in the same invocation);
* ``choco-train --backend local`` of ``--train-nodes`` nodes (the digits MLP, one epoch, ring,
  sign, γ = 0.5): peak resident memory (``ru_maxrss`` of the child) and host seconds.

Host times depend on the machine and its load (the line ``load`` shows the 1-minute load
average before and after); the ratios in one run are the comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from .gossip import machine_line

HELP = "in-process network at scale: consensus time with/without the clock, training memory"

NETWORK = "bandwidth=1g,latency=50us,compute=1ms"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--consensus-nodes", default="256,1024", help="n of the consensus runs")
    p.add_argument("--train-nodes", default="256", help="n of the training runs (0: none)")
    p.add_argument("--dim", type=int, default=1000, help="d of the consensus")
    p.add_argument("--rounds", type=int, default=100, help="consensus rounds")
    p.add_argument("--network", default=NETWORK, help="the simulated network of the clocked "
                   "runs")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
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
"""


def _child(argv: list[str], timeout: float) -> dict:
    """Run ``python -m ARGV`` alone; its host seconds, peak resident MiB and JSON line."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *argv], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines()
            if line.startswith("PEAK_KIB ")]
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return {"seconds": seconds, "peak_mib": peak[-1] / 1024 if peak else float("nan"),
            "summary": json.loads(last)}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip() and int(v) > 0]


def run(args: argparse.Namespace) -> int:
    rows = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for n in _ints(args.consensus_nodes):
            base = ["choco.consensus", "--topology", f"ring:{n}", "--compressor",
                    "sign", "--gamma", "0.5", "--dim", str(args.dim), "--steps",
                    str(args.rounds), "--quiet", "--json", "--overwrite",
                    "--out", f"{tmp}/c{n}.npz"]
            plain = _child(base, args.timeout)
            clocked = _child([*base, "--network", args.network], args.timeout)
            rows.append({"what": "consensus", "n": n, "plain_s": plain["seconds"],
                         "clocked_s": clocked["seconds"],
                         "overhead": clocked["seconds"] / plain["seconds"] - 1,
                         "sim_time_s": clocked["summary"].get("sim_time_s"),
                         "peak_mib": plain["peak_mib"]})
        for n in _ints(args.train_nodes):
            out = _child(["choco.train", "--backend", "local", "--nodes", str(n),
                          "--topology", "ring", "--epochs", "1", "--gamma", "0.5", "--quiet",
                          "--json", "--out", f"{tmp}/t{n}"], args.timeout)
            rows.append({"what": "train", "n": n, "plain_s": out["seconds"],
                         "peak_mib": out["peak_mib"]})
    load1 = os.getloadavg()[0]
    lines = [machine_line(None), f"load (1-min average) {load0:.1f} before, {load1:.1f} after; "
             f"clock: --network {args.network}", "",
             "| run | n | host s | host s with clock | clock overhead | peak MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["what"] == "consensus":
            lines.append(f"| consensus ring sign d={args.dim}, {args.rounds} rounds | {r['n']} "
                         f"| {r['plain_s']:.1f} | {r['clocked_s']:.1f} | "
                         f"{100 * r['overhead']:+.0f}% | {r['peak_mib']:.0f} |")
        else:
            lines.append(f"| choco-train digits MLP, 1 epoch | {r['n']} | {r['plain_s']:.1f} | "
                         f" | | {r['peak_mib']:.0f} |")
    print("\n".join(lines), flush=True)
    if args.json:
        print(json.dumps({"rows": rows, "load": [load0, load1]}), flush=True)
    return 0

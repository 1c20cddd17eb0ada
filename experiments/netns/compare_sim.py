"""Simulated against measured rounds on per-node shaped links (experiments/netns/sim_run.sh).

    python -m experiments.netns.compare_sim SHAPED.txt UNSHAPED.txt [--gbit 1] [--latency-us 50]

``SHAPED.txt``/``UNSHAPED.txt``: the output of ``python -m choco.bench gossip --json`` under
``mpiexec`` with every rank in its own network namespace, its one link shaped (or not) by
``tc tbf``. For every compressor the same consensus round (ring of ``n``, fp32 vector of the
same size) runs in process under ``--network bandwidth=G,latency=L,encode=E,decode=D``, with
``E`` and ``D`` the encode and decode+update times of the unshaped run (the CPU part), and
the simulated time per round is compared with the measured one. The all-reduce row uses the
clock's ring all-reduce formula. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from choco.run import consensus
from choco.sim.model import Link, allreduce_time


def read(path: str) -> dict:
    for line in reversed(Path(path).read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"{path}: no JSON line of `python -m choco.bench gossip --json`")


def simulated_round(n: int, numel: int, spec: str, network: str, rounds: int = 4) -> float:
    """Simulated seconds per round of the in-process consensus with ``network``."""
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "x0.npy"
        np.save(init, np.random.default_rng(0).standard_normal((n, numel), dtype=np.float32))
        out = Path(tmp) / "c.npz"
        argv = ["--topology", f"ring:{n}", "--compressor", spec, "--gamma", "0.5",
                "--init", str(init), "--steps", str(rounds), "--quiet", "--out", str(out),
                "--network", network]
        if consensus.main(argv) != 0:
            raise SystemExit(f"the simulated consensus for {spec} failed")
        return float(np.load(out)["sim_time_s"][-1]) / rounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shaped")
    p.add_argument("unshaped")
    p.add_argument("--gbit", type=float, default=1.0, help="shaped rate per link, Gbit/s")
    p.add_argument("--latency-us", type=float, default=50.0, help="α per message, µs")
    args = p.parse_args(argv)
    shaped, unshaped = read(args.shaped), read(args.unshaped)
    n, numel = shaped["n"], shaped["numel"]
    cpu = {r["spec"]: r for r in unshaped["rows"]}
    lines = [f"n = {n} ({shaped['topology']}), d = {numel:,} fp32, every rank's link shaped to "
             f"{args.gbit:g} Gbit/s; simulated with latency {args.latency_us:g} µs and the "
             "unshaped run's encode and decode+update times", shaped["machine"], "",
             "| round | measured ms | simulated ms | error |", "|---|---:|---:|---:|"]
    link = Link(args.latency_us * 1e-6, args.gbit * 1e9 / 8)
    measured_ar = float(np.median([r["allreduce_ms"] for r in shaped["rows"]]))
    sim_ar = 1e3 * allreduce_time(n, shaped["allreduce_bytes"], link)
    rows = [("all-reduce (link only)", measured_ar, sim_ar)]
    for r in shaped["rows"]:
        c = cpu[r["spec"]]
        network = (f"bandwidth={args.gbit:g}g,latency={args.latency_us:g}us,"
                   f"encode={c['encode_ms']:.4f}ms,decode={c['decode_update_ms']:.4f}ms")
        rows.append((f"`{r['spec']}`", r["round_ms"],
                     1e3 * simulated_round(n, numel, r["spec"], network)))
    for what, measured, simulated in rows:
        lines.append(f"| {what} | {measured:.1f} | {simulated:.1f} | "
                     f"{100 * (simulated - measured) / measured:+.1f}% |")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

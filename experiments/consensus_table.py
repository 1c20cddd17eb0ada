"""CHOCO-Gossip average consensus for every compressor: error reduction and bytes per node.

    python experiments/consensus_table.py [--topology ring:8] [--steps 1000] [--dim 1000]

For each compressor, γ comes from the consensus tuner (:func:`choco.tuning.tune_gamma`) on
the same topology; X0 ~ N(0, 1) of shape (n, dim), seeded. Prints a Markdown table of
``error_0 / error_T`` and the bytes each node sent, the way ``python -m choco.consensus``
computes them (its ``--json`` summary is read back).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from choco.compress import make_compressor
from choco.run.consensus import main as consensus
from choco.tuning import tune_gamma
from topologies import parse_topology

SPECS = ["identity", "sign", "topk:0.01", "topk:0.1", "randk:0.1", "randblock:0.1", "natural",
         "dither:8", "qsgd:16", "topk:0.1+natural", "scaled(randk:0.1:raw)"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--topology", default="ring:8", help="topology spec")
    p.add_argument("--mixing", default="metropolis", help="mixing rule")
    p.add_argument("--steps", type=int, default=1000, help="gossip rounds T")
    p.add_argument("--dim", type=int, default=1000, help="columns of X0")
    p.add_argument("--specs", default=",".join(SPECS), help="compressor specs, comma-separated")
    a = p.parse_args(argv)
    topo = parse_topology(a.topology, a.mixing)
    print(f"{a.topology} ({a.mixing}): n = {topo.n}, spectral gap {topo.spectral_gap:.3f}, "
          f"d = {a.dim}, T = {a.steps}\n")
    print("| compressor | γ (tuned) | error₀ | error_T | reduction | bytes/node | bytes/msg |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        x0 = Path(tmp) / "X0.npy"
        np.save(x0, np.random.default_rng(0).standard_normal((topo.n, a.dim)))
        for spec in a.specs.split(","):
            gamma, _ = tune_gamma(topo.W, make_compressor(spec), dim=min(a.dim, 500), steps=200)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = consensus(["--topology", a.topology, "--mixing", a.mixing,
                                  "--compressor", spec, "--gamma", str(gamma), "--steps",
                                  str(a.steps), "--init", str(x0), "--out",
                                  str(Path(tmp) / "o.npz"), "--json", "--quiet"])
            if code:
                print(f"| {spec} | {gamma:.3g} | failed (exit {code}) | | | | |")
                continue
            s = json.loads(buf.getvalue().strip().splitlines()[-1])
            per_msg = s["bytes_per_node"] / a.steps / np.mean(topo.degrees)
            print(f"| {spec} | {gamma:.3g} | {s['error_initial']:.3g} | {s['error_final']:.3g} "
                  f"| {s['reduction']:.3g} | {s['bytes_per_node']:.0f} | {per_msg:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

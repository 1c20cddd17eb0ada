"""``python -m choco.tuning``: tune CHOCO's consensus step γ for a topology and a compressor.

Simulates CHOCO-Gossip alone on the topology's real mixing matrix with the real compressor,
from Gaussian vectors, for each γ of a log grid (:func:`choco.tuning.tune_gamma`), prints the
residual of every candidate and the best γ; ``--json`` adds one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys

from topologies import parse_topology

from ..compress import available, make_compressor
from ..errors import UsageError
from ..tuning import tune_gamma
from .cli import HelpFormatter, add_version_argument, run_local, setup_output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m choco.tuning", formatter_class=HelpFormatter,
        description="Tune CHOCO's consensus step gamma on a topology: simulate CHOCO-Gossip "
        "alone with the real mixing matrix and compressor for each gamma in "
        "logspace(-3, 0, GRID) and keep the one with the smallest final residual "
        "sum_i ||x_i - mean||^2 + ||x_i - x_hat_i||^2 (docs/gamma.md).",
        epilog="compressor specs: " + ", ".join(available()))
    add_version_argument(p)
    p.add_argument("--topology", default="ring:8", help="ring:8, torus:4x4, social, ...")
    p.add_argument("--mixing", default="metropolis", help="metropolis | maxdegree | uniform")
    p.add_argument("--compressor", default="sign", help="compressor spec")
    p.add_argument("--dim", type=int, default=1000, help="length of each node's vector")
    p.add_argument("--steps", type=int, default=300, help="gossip rounds per candidate γ")
    p.add_argument("--grid", type=int, default=13, help="number of candidates in logspace(-3, 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the vectors and compressors")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    for option, value, low in (("--dim", args.dim, 1), ("--steps", args.steps, 1),
                               ("--grid", args.grid, 2)):
        if value < low:
            raise UsageError(f"{option} must be >= {low}, got {value}.")
    if args.dim * args.steps > 10**9:
        raise UsageError(f"--dim × --steps = {args.dim * args.steps} is too much work for a "
                         "tuner (each candidate simulates all of it); keep it below 1e9, e.g. "
                         "--dim 1000 --steps 300.")
    topo = parse_topology(args.topology, args.mixing)
    compressor = make_compressor(args.compressor)
    gamma, scores = tune_gamma(topo.W, compressor, args.dim, args.steps, args.grid, args.seed)
    for g, s in scores.items():
        print(f"gamma {g:.4g}  residual {s:.4e}")
    print(f"best gamma for {compressor.spec} on {topo.spec}: {gamma:.4g}", flush=True)
    if args.json:
        print(json.dumps({"gamma": gamma, "topology": topo.spec, "compressor": compressor.spec,
                          "scores": {f"{g:.6g}": s for g, s in scores.items()}}))
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_output()
    args = parse_args(argv)
    return run_local(lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

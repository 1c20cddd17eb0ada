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
from .cli import (
    ArgumentParser,
    HelpFormatter,
    add_gossip_arguments,
    add_version_argument,
    setup_output,
)
from .files import check_memory, largest, memory_limit
from .launch import run_local

#: memory per node and per vector entry of the simulation (float32 x, x̂, s, messages, the
#: stacked residual; measured: 44 bytes with identity)
BYTES_PER_ENTRY = 48
#: the finest grid: candidates in logspace(-3, 0) closer than this are indistinguishable
MAX_GRID = 1000
#: the most work (dim × steps) each candidate may simulate
MAX_WORK = 10**9
#: seeds are 64-bit (torch's generator)
SEED_RANGE = 2**64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m choco.tuning", formatter_class=HelpFormatter,
        description="Tune CHOCO's consensus step gamma on a topology: simulate CHOCO-Gossip "
        "alone with the real mixing matrix and compressor for each gamma in "
        "logspace(-3, 0, GRID) and keep the one with the smallest final residual "
        "sum_i ||x_i - mean||^2 + ||x_i - x_hat_i||^2 (docs/gamma.md).",
        epilog="compressor specs: " + ", ".join(available()))
    add_version_argument(p)
    add_gossip_arguments(p)
    p.add_argument("--dim", type=int, default=1000, help="length of each node's vector")
    p.add_argument("--steps", type=int, default=300, help="gossip rounds per candidate γ")
    p.add_argument("--grid", type=int, default=13, help="number of candidates in logspace(-3, 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the vectors and compressors")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers in range, before anything is parsed or allocated."""
    for option, value, low, example in (("--dim", args.dim, 1, 1000),
                                        ("--steps", args.steps, 1, 300),
                                        ("--grid", args.grid, 2, 13)):
        if value < low:
            raise UsageError(f"{option} must be >= {low}, got {value}; e.g. {option} "
                             f"{example}.")
    if args.grid > MAX_GRID:
        raise UsageError(f"--grid must be at most {MAX_GRID} (candidates in logspace(-3, 0) "
                         f"closer than that give the same residual), got {args.grid}; e.g. "
                         "--grid 13.")
    if args.dim * args.steps > MAX_WORK:
        raise UsageError(f"--dim × --steps must be at most 1e9 (each candidate simulates all "
                         f"of it), got {args.dim * args.steps:,}; e.g. --dim 1000 --steps 300.")
    if not 0 <= args.seed < SEED_RANGE:
        raise UsageError(f"--seed must be in [0, 2^64), got {args.seed}; e.g. --seed 0.")


def check_run_memory(n: int, dim: int) -> None:
    """Refuse a simulation of ``n`` nodes × ``dim`` entries that cannot fit in memory."""
    need = BYTES_PER_ENTRY * n * dim
    limit, _ = memory_limit()
    if need > limit:
        most = largest(lambda d: BYTES_PER_ENTRY * n * d <= limit, high=dim)
        fix = f"lower --dim to at most {most:,}" if most else "use fewer nodes"
        check_memory(need, "the tuner's simulation",
                     f"{n} nodes × {dim:,} entries × about {BYTES_PER_ENTRY} bytes", fix)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    topo = parse_topology(args.topology, args.mixing)
    compressor = make_compressor(args.compressor)
    check_run_memory(topo.n, args.dim)
    target = topo if topo.time_varying else topo.W  # a schedule is simulated round by round
    gamma, scores = tune_gamma(target, compressor, args.dim, args.steps, args.grid,
                               args.seed)
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

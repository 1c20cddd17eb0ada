"""Command line: inspect a topology and optionally save its mixing matrix.

Usage::

    python -m topologies SPEC [--mixing metropolis|maxdegree|uniform] [--json] [--save W.npy]

Examples::

    python -m topologies torus:4x4
    python -m topologies social --mixing maxdegree --json
    python -m topologies ring:8 --save W.npy      # then: choco takes file:W.npy

With ``--json`` the last line of stdout is one JSON object with the keys ``spec``, ``n``,
``edges`` (pairs ``[i, j]``, ``i < j``), ``degrees``, ``mixing``, ``spectral_gap``, ``beta``
and ``W`` (list of rows). Invalid input prints one paragraph on stderr and exits with 2,
without writing the ``--save`` file.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from .errors import TopologyError
from .mixing import MIXING_RULES
from .spec import SPEC_FORMS, Topology, parse_topology

PROG = "python -m topologies"
EXIT_USAGE = 2  # same code argparse uses for bad arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a communication graph and its mixing matrix W, check W, and "
        "report the spectral gap rho = 1 - max_{k>=2} |lambda_k(W)| (arXiv:1907.09356).",
    )
    from choco import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s (choco {__version__})")
    parser.add_argument("spec", help=f"topology spec, one of: {', '.join(SPEC_FORMS)}")
    parser.add_argument(
        "--mixing",
        choices=MIXING_RULES,
        default="metropolis",
        help="weight rule (default: metropolis; ignored for file:W.npy)",
    )
    parser.add_argument("--json", action="store_true", help="print one line of JSON last")
    parser.add_argument("--save", metavar="PATH",
                        help="write W with numpy.save to PATH (default: not saved)")
    return parser


def summary(topology: Topology) -> str:
    """Human-readable multi-line description of a topology."""
    degrees = topology.degrees
    lines = [
        ("spec", topology.spec),
        ("nodes", str(topology.n)),
        ("edges", str(len(topology.edges))),
        ("degree", f"min {min(degrees)}, max {max(degrees)}"),
        ("mixing", topology.mixing),
        ("spectral gap", f"{topology.spectral_gap:.6g}"),
        ("beta", f"{topology.beta:.6g}"),
    ]
    return "\n".join(f"{key:<13} {value}" for key, value in lines)


def as_json(topology: Topology) -> str:
    """One-line JSON description of a topology (keys documented in the module docstring)."""
    record = {
        "spec": topology.spec,
        "n": topology.n,
        "edges": [[i, j] for i, j in topology.edges],
        "degrees": topology.degrees,
        "mixing": topology.mixing,
        "spectral_gap": topology.spectral_gap,
        "beta": topology.beta,
        "W": topology.W.tolist(),
    }
    return json.dumps(record, allow_nan=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 on success, 2 on invalid input)."""
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            topology = parse_topology(args.spec, mixing=args.mixing)
        except TopologyError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    if args.save:
        try:
            with open(args.save, "wb") as file:
                np.save(file, topology.W)
        except OSError as exc:
            print(
                f"{PROG}: error: --save needs a writable file path, got "
                f"{args.save!r} ({exc.strerror}); check that the directory exists",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if args.json:
        print(as_json(topology))
    else:
        print(summary(topology))
        if args.save:
            print(f"{'saved W':<13} {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m topologies``: inspect a topology and optionally save its mixing matrix.

Usage::

    python -m topologies SPEC [--mixing metropolis|maxdegree|uniform] [--json]
                              [--save W.npy [--overwrite]]

Examples::

    python -m topologies torus:4x4
    python -m topologies social --mixing maxdegree --json
    python -m topologies ring:8 --save W.npy      # then: choco takes file:W.npy
    python -m topologies onepeer:16               # union graph, period, each round's pairs

With ``--json`` the last line of stdout is one JSON object with the keys ``spec``, ``n``,
``edges`` (pairs ``[i, j]``, ``i < j``), ``degrees``, ``mixing``, ``spectral_gap``, ``beta``
and ``W`` (list of rows). ``--save`` writes ``W`` atomically; it refuses an existing file
unless ``--overwrite`` is given, and never writes onto the spec's own input file
(``file:W.npy --save W.npy``). Invalid input prints one paragraph on stderr,
``error: <requirement>, got <value>; <fix>``, and exits with 2, having written nothing;
sizes whose memory estimate exceeds the limit (1/4 of physical memory) are refused
before anything is built. A time-varying spec prints its union graph, period and rounds
(:mod:`choco.run.schedule_view`).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from topologies.mixing import MIXING_RULES
from topologies.schedule import Schedule
from topologies.spec import SPEC_FORMS, Topology, parse_topology

from ..errors import ChocoError, UsageError
from .cli import ArgumentParser, add_version_argument
from .files import atomic_write, check_memory, check_output_file, format_bytes, spec_file
from .launch import USAGE_EXIT
from .schedule_view import SHOWN_ROUNDS, schedule_json, schedule_rounds, schedule_summary

PROG = "python -m topologies"
#: memory per entry of W for --json: a Python float in a list, and its text (measured: 80)
JSON_BYTES_PER_ENTRY = 100


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Build a communication graph and its mixing matrix W, check W, and "
        "report the spectral gap rho = 1 - max_{k>=2} |lambda_k(W)| (arXiv:1907.09356).",
    )
    add_version_argument(parser)
    parser.add_argument("spec", help=f"topology spec, one of: {', '.join(SPEC_FORMS)}")
    parser.add_argument(
        "--mixing",
        choices=MIXING_RULES,
        default="metropolis",
        help="weight rule (default: metropolis; ignored for file:W.npy)",
    )
    parser.add_argument("--json", action="store_true", help="print one line of JSON last")
    parser.add_argument("--rounds", type=int, default=None, metavar="T",
                        help="time-varying specs: rounds to list (default: one period, or "
                        f"{SHOWN_ROUNDS} without a period)")
    parser.add_argument("--save", metavar="PATH",
                        help="write W with numpy.save to PATH (default: not saved)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --save replace an existing file (default: refuse it)")
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


def save_matrix(path: Path, W: NDArray[np.float64]) -> None:
    """``numpy.save`` to exactly ``path``, atomically: a temporary file renamed into place."""
    atomic_write(path, lambda file: np.save(file, W))


def run(args) -> int:
    """The program once the command line is parsed; raises ChocoError on bad input."""
    save = None
    if args.save is not None:  # checked before any work: nothing is built for a bad path
        save = check_output_file(args.save, "--save", inputs=[spec_file(args.spec)],
                                 overwrite=args.overwrite)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        topology = parse_topology(args.spec, mixing=args.mixing)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if isinstance(topology, Schedule):
        if save is not None:
            raise UsageError(f"--save writes one mixing matrix, but {args.spec!r} is a "
                             "schedule (one W per round); drop --save")
        count = schedule_rounds(topology, args.rounds)
        print(schedule_json(topology, count) if args.json
              else schedule_summary(topology, count))
        return 0
    if args.json:
        n = topology.n
        check_memory(JSON_BYTES_PER_ENTRY * n * n, "--json",
                     f"W as JSON, n² = {n * n:,} entries of about {JSON_BYTES_PER_ENTRY} "
                     f"bytes each", "drop --json (the summary and --save need no JSON) or "
                     "use fewer nodes")
    if save is not None:
        try:
            save_matrix(save, topology.W)
        except OSError as exc:
            raise UsageError(
                f"--save needs a writable file path, got {args.save!r} ({exc.strerror}); "
                f"choose another --save ({format_bytes(topology.W.nbytes)} are needed)"
            ) from None
    if args.json:
        print(as_json(topology))
    else:
        print(summary(topology))
        if save is not None:
            print(f"{'saved W':<13} {args.save}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 on success, 2 on invalid input)."""
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except ChocoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT

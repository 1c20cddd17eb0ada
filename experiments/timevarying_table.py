"""The time-varying graphs table: rounds and bytes per node to a target error reduction.

    python -m experiments.timevarying_table RUNS_DIR [--target 1e6] [--rounds 100,500]

``RUNS_DIR`` is the output folder of a consensus sweep (``experiments/configs/
small_timevarying.toml``). For each finished run it reads ``consensus.npz`` (the error
``(1/n) Σ_i ‖x_i^t − x̄⁰‖²`` of every round and the bytes each node sent) and prints one
Markdown row: γ, bytes per node per round, the error reduction after the given rounds and
at the end, and the first round (and the bytes per node until then) at which the error is
``--target`` times below its start. Bytes per round are the run's average (exact for every
schedule but ``+pga:H``, whose all-reduce is spread over its H rounds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from choco.run.cli import ArgumentParser

#: the order of the rows: compressor, then topology in this order (others after, by name)
TOPOLOGY_ORDER = ("ring", "exponential", "onepeer", "base", "matching")


def row(folder: Path, target: float, rounds: list[int]) -> dict | None:
    """The numbers of one run folder (``None`` if it did not finish)."""
    try:
        result = json.loads((folder / "result.json").read_text())
        data = np.load(folder / "consensus.npz")
    except (OSError, ValueError):
        return None
    if result.get("status") != "finished" or result.get("kind") != "consensus":
        return None
    error = data["error"]
    steps = len(error) - 1
    per_round = float(data["bytes_sent"].mean()) / max(steps, 1)
    hit = np.flatnonzero(error <= error[0] / target)
    summary = result["summary"]
    return {
        "topology": summary["topology"], "compressor": summary["compressor"],
        "gamma": summary["gamma"], "bytes_per_round": per_round, "steps": steps,
        "reductions": [float(error[0] / error[r]) if r <= steps and error[r] > 0 else None
                       for r in [*rounds, steps]],
        "rounds_to_target": int(hit[0]) if hit.size else None,
        "bytes_to_target": float(hit[0] * per_round) if hit.size else None,
    }


def _order(rec: dict) -> tuple:
    name = rec["topology"].split(":")[0]
    rank = TOPOLOGY_ORDER.index(name) if name in TOPOLOGY_ORDER else len(TOPOLOGY_ORDER)
    return (rec["compressor"], "+" in rec["topology"], rank, rec["topology"])


def _sci(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def markdown(records: list[dict], target: float, rounds: list[int]) -> str:
    """The table, one row per run."""
    steps = records[0]["steps"] if records else 0
    head = ["compressor", "topology", "γ", "bytes/node/round",
            *(f"reduction @{r}" for r in rounds), f"reduction @{steps}",
            f"rounds to ×{target:g}", f"KiB/node to ×{target:g}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rec in sorted(records, key=_order):
        reach = rec["rounds_to_target"]
        lines.append("| " + " | ".join([
            rec["compressor"], rec["topology"], f"{rec['gamma']:.3g}",
            f"{rec['bytes_per_round']:.0f}", *(_sci(v) for v in rec["reductions"]),
            "not reached" if reach is None else str(reach),
            "" if reach is None else f"{rec['bytes_to_target'] / 1024:.1f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.timevarying_table",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="the sweep's output folder")
    p.add_argument("--target", type=float, default=1e6, help="error reduction to reach")
    p.add_argument("--rounds", default="100,500", help="rounds at which to show the reduction")
    args = p.parse_args(argv)
    rounds = [int(r) for r in args.rounds.split(",") if r.strip()]
    records = [r for r in (row(f, args.target, rounds) for f in sorted(args.runs.iterdir())
                           if f.is_dir()) if r is not None]
    if not records:
        print(f"error: no finished consensus runs in {args.runs}", file=sys.stderr)
        return 2
    print(markdown(records, args.target, rounds), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

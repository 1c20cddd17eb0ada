"""What ``python -m topologies`` prints for a time-varying schedule (``onepeer:16``, ...):
the union graph, the period and each round's pairs (:mod:`choco.run.topologies_cli`).

With ``--json`` the last line holds ``spec``, ``n``, ``period`` (``null`` without one),
``pga_every``, ``edges`` (the union graph), ``degrees``, ``max_peers``, ``spectral_gap``
(the per-round rate, see ``topologies.Schedule.spectral_gap``) and ``rounds`` (per listed
round, the triples ``[i, j, w_ij]``).
"""

from __future__ import annotations

import json

from topologies import Schedule

from ..errors import UsageError

__all__ = ["SHOWN_ROUNDS", "schedule_json", "schedule_rounds", "schedule_summary"]

#: rounds listed for a schedule without a period (matching)
SHOWN_ROUNDS = 8


def schedule_rounds(schedule: Schedule, rounds: int | None) -> int:
    """How many rounds to list: ``rounds``, else one period (or :data:`SHOWN_ROUNDS`)."""
    if rounds is None:
        return schedule.period or SHOWN_ROUNDS
    if rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}; e.g. --rounds 8")
    return rounds


def schedule_summary(schedule: Schedule, rounds: int) -> str:
    """The union graph, the period, and each listed round's pairs (weights other than ½
    in parentheses)."""
    degrees = schedule.degrees
    period = ("none (a fresh draw every round)" if schedule.period is None
              else str(schedule.period))
    lines = [
        ("spec", schedule.spec), ("nodes", str(schedule.n)),
        ("union edges", str(len(schedule.edges))),
        ("union degree", f"min {min(degrees)}, max {max(degrees)}"),
        ("period", period), ("peers/round", f"at most {schedule.max_peers}"),
        ("global avg", f"every {schedule.pga_every} rounds" if schedule.pga_every else "none"),
        ("rate gap", f"{schedule.spectral_gap:.6g}"),
    ]
    out = [f"{key:<13} {value}" for key, value in lines]
    for t in range(rounds):
        pairs = " ".join(f"{i}-{j}" if w == 0.5 else f"{i}-{j}({w:.4g})"
                         for i, j, w in schedule.round_edges(t))
        out.append(f"round {t:<7} {pairs or '(no exchange)'}")
    return "\n".join(out)


def schedule_json(schedule: Schedule, rounds: int) -> str:
    """One line of JSON (keys in the module docstring)."""
    return json.dumps({
        "spec": schedule.spec, "n": schedule.n, "period": schedule.period,
        "pga_every": schedule.pga_every, "edges": [[i, j] for i, j in schedule.edges],
        "degrees": schedule.degrees, "max_peers": schedule.max_peers,
        "spectral_gap": schedule.spectral_gap,
        "rounds": [[[i, j, w] for i, j, w in schedule.round_edges(t)] for t in range(rounds)],
    }, allow_nan=False)

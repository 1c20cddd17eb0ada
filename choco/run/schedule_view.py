"""What ``python -m topologies`` prints for a time-varying schedule (``onepeer:16``, ...):
the union graph, the period and each round's pairs (:mod:`choco.run.topologies_cli`).

With ``--json`` the last line holds ``spec``, ``n``, ``period`` (``null`` without one),
``pga_every``, ``edges`` (the union graph), ``degrees``, ``max_peers``, ``spectral_gap``
(the per-round rate, see ``topologies.Schedule.spectral_gap``), ``contraction_per_round``
and ``contraction_rounds`` (:func:`rate_keys`) and ``rounds`` (per listed round, the
triples ``[i, j, w_ij]``).
"""

from __future__ import annotations

import json
from typing import Any

from topologies import Schedule
from topologies.schedule import RATE_ROUNDS

from ..errors import UsageError

__all__ = ["SHOWN_ROUNDS", "rate_keys", "schedule_json", "schedule_rounds",
           "schedule_summary"]

#: rounds listed for a schedule without a period (matching)
SHOWN_ROUNDS = 8


def rate_keys(topology: Any) -> dict[str, float | int]:
    """What ``spectral_gap`` means, as the two keys added next to it (config.json, --json).

    ``contraction_per_round`` is ``c = ‖Π_{t<P} W_t − 11ᵀ/n‖₂^{1/P}``: the factor by which
    one round shrinks the distance to the average, taken as the geometric mean over
    ``contraction_rounds`` = P rounds (a schedule's period, ``RATE_ROUNDS`` rounds of a
    schedule without one such as ``matching``, 1 for a static graph, where
    ``c = max_{k≥2} |λ_k(W)|``). ``spectral_gap`` is ``1 − c`` in both cases, which for a
    schedule is a rate over P rounds and not an eigenvalue gap of any one ``W_t``; ``c = 0``
    for a schedule that averages exactly within its period (onepeer, base). Global averages
    of ``+pga:H`` are not counted."""
    return {"contraction_per_round": 1.0 - float(topology.spectral_gap),
            "contraction_rounds": int(topology.period or RATE_ROUNDS)}


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
        "spectral_gap": schedule.spectral_gap, **rate_keys(schedule),
        "rounds": [[[i, j, w] for i, j, w in schedule.round_edges(t)] for t in range(rounds)],
    }, allow_nan=False)

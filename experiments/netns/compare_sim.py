"""Simulated against measured time on per-node shaped links (experiments/netns/sim_run.sh).

    python -m experiments.netns.compare_sim OUTDIR [--gbit 1] [--latency-us 50]

``OUTDIR`` holds what ``sim_run.sh`` measured with every MPI rank in its own network
namespace, its one link's egress shaped by ``tc tbf``:

* ``gossip-n{N}-r{K}.txt``: repeat ``K`` of ``python -m choco.bench gossip --json`` on
  ``ring:N`` (the last line is JSON). Every measured round is simulated with **its own**
  CPU times: each rank's encode and decode+update of that round go through the clock's
  rules (:func:`round_on_clock`), and the medians over all rounds of all repeats are
  compared. As a check of the whole in-process path, the same consensus round also runs in
  process under ``--network bandwidth=G,latency=L,encode=E,decode=D,slow=...`` with
  ``E`` the ranks' mean encode (begin) time, ``D`` their
  mean decode+update time (the finish minus its waits) divided by the degree (the clock
  charges ``decode`` per received message) and each rank's own CPU time relative to the
  mean as its ``slow`` factor (:func:`gossip_network`), once per repeat. The all-reduce row
  is the clock's ring formula (link time only). The bandwidth given to the clock is the TCP
  payload rate of the shaped link, ``G · 1448/1514`` (:data:`TCP_PAYLOAD`).
* ``train-{LABEL}-r{K}/``: repeat ``K`` of a training run: ``args.json`` (the
  ``choco-train`` options), ``timing-rank{R}.json`` per rank
  (:mod:`experiments.netns.timed_train`). The measured time is the slowest rank's time in
  the training epochs (evaluation excluded); the in-process run (``--backend local``, same
  options) gets ``compute``, ``encode``, ``decode`` and per-rank factors from that
  repeat's own timers (:func:`train_network`) and its last ``sim_time_s`` is compared;
  medians over repeats, with the per-repeat errors.

Prints a Markdown table (and the load average of the machine while measuring, from
``load.txt`` if present).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from choco.sim.model import Link, NodeTimes, allreduce_time, post, receive_each
from topologies import parse_topology

#: within this relative error a row counts as validated (the issue's goal)
TOLERANCE = 0.20


def read(path: str | Path) -> dict:
    """The JSON line of a ``python -m choco.bench gossip --json`` output."""
    for line in reversed(Path(path).read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"{path}: no JSON line of `python -m choco.bench gossip --json`")


#: payload share of a full TCP segment on the wire at MTU 1500 (1448 payload bytes, with
#: timestamps, per 1514-byte Ethernet frame): tbf shapes frames, the clock counts payload
TCP_PAYLOAD = 1448 / 1514


def link_spec(gbit: float, latency_us: float) -> str:
    """``bandwidth`` (the payload rate of a ``gbit`` Gbit/s tbf link) and ``latency``."""
    return f"bandwidth={gbit * TCP_PAYLOAD:.12g}g,latency={latency_us:g}us"


def slow_factors(cpu: Sequence[float]) -> str:
    """``slow=`` value giving rank ``r`` the factor ``cpu[r] / mean(cpu)`` ("" if all
    equal): each node runs at its own measured pace around the means given as times."""
    mean = statistics.fmean(cpu)
    if mean <= 0 or all(c == cpu[0] for c in cpu):
        return ""
    return ",slow=" + ";".join(f"{r}:{c / mean:.6f}" for r, c in enumerate(cpu))


def gossip_network(row: dict, degree: int, gbit: float, latency_us: float) -> str:
    """``--network`` spec of one measured gossip row: ``encode`` = the ranks' mean encode
    (begin) ms, ``decode`` = their mean decode+update ms / degree (the clock charges it per
    received message), and each rank's (encode + decode+update) / the mean as its ``slow``
    factor (rows without per-rank times: the means only)."""
    encode = row.get("rank_encode_ms", [row["encode_ms"]])
    decode = row.get("rank_decode_update_ms", [row["decode_update_ms"]])
    cpu = [e + d for e, d in zip(encode, decode, strict=True)]
    return (f"{link_spec(gbit, latency_us)},encode={statistics.fmean(encode):.6f}ms,"
            f"decode={statistics.fmean(decode) / degree:.6f}ms"
            + (slow_factors(cpu) if len(cpu) > 1 else ""))


def train_network(timings: Sequence[dict], gbit: float, latency_us: float) -> str:
    """``--network`` spec from the ranks' timers (:mod:`experiments.netns.timed_train`),
    in rank order. Means over ranks of: ``compute`` = (train − begin − finish) / steps
    (forward, backward, update and the loop's own work); ``encode`` = begin / steps (one
    ``begin`` per local step); ``decode`` = (finish − waits) / (rounds · degree); and each
    rank's CPU time per step (compute + encode + degree · decode) / the mean as its
    ``slow`` factor."""
    compute = [(t["train_s"] - t["begin_s"] - t["finish_s"]) / t["steps"] for t in timings]
    encode = [t["begin_s"] / t["steps"] for t in timings]
    decode = [(t["finish_s"] - t["wait_s"]) / (t["rounds"] * t["degree"]) for t in timings]
    cpu = [c + e + t["degree"] * d
           for c, e, d, t in zip(compute, encode, decode, timings, strict=True)]
    return (f"{link_spec(gbit, latency_us)},compute={1e3 * statistics.fmean(compute):.6f}ms,"
            f"encode={1e3 * statistics.fmean(encode):.6f}ms,"
            f"decode={1e3 * statistics.fmean(decode):.6f}ms" + slow_factors(cpu))


def error(simulated: float, measured: float) -> float:
    """Relative error of the simulation, ``(simulated − measured) / measured``."""
    return (simulated - measured) / measured


def round_on_clock(n: int, nbytes: int, encode_ms: Sequence[float],
                   decode_ms: Sequence[float], gbit: float, latency_us: float) -> float:
    """Simulated ms of one consensus round on ``ring:n`` started together (after the
    benchmark's barrier), node ``i`` encoding for ``encode_ms[i]`` and spending
    ``decode_ms[i]`` on decoding and the update (``decode_ms[i] / degree`` per message):
    the clock's own rules (:func:`~choco.sim.model.post`, then
    :func:`~choco.sim.model.receive_each`, what ``NetworkClock`` applies to
    ``ChocoGossip``), one round, the slowest node's end."""
    topo = parse_topology(f"ring:{n}")
    neighbors = [list(topo.neighbors(i)) for i in range(n)]
    wire = latency_us * 1e-6 + nbytes * 8 / (gbit * TCP_PAYLOAD * 1e9)
    times = [NodeTimes() for _ in range(n)]
    sent = [post(times[i], 1e-3 * encode_ms[i], [wire] * len(nb))
            for i, nb in enumerate(neighbors)]
    for i, nb in enumerate(neighbors):
        stamps = [sent[j][neighbors[j].index(i)] for j in nb]
        receive_each(times[i], stamps, 1e-3 * decode_ms[i] / len(nb))
    return 1e3 * max(t.now for t in times)


def row_line(what: str, measured: float, simulated: float,
             errors: Sequence[float] = ()) -> str:
    """One table row: medians, their error, the per-repeat error range, within 20 %?"""
    e = error(simulated, measured)
    spread = (f"{100 * min(errors):+.1f} … {100 * max(errors):+.1f} %" if len(errors) > 1
              else "")
    ok = "yes" if abs(e) <= TOLERANCE else "**no**"
    return (f"| {what} | {measured:.1f} | {simulated:.1f} | {100 * e:+.1f} % | {spread} "
            f"| {ok} |")


HEADER = ["| round or run | measured ms | simulated ms | error | per-repeat errors "
          "| within 20 % |", "|---|---:|---:|---:|---:|:---:|"]


def gossip_files(out: Path) -> dict[int, list[Path]]:
    """``{N: [repeat files]}`` from ``gossip-n{N}-r{K}.txt``, sorted."""
    found: dict[int, list[Path]] = {}
    for path in sorted(out.glob("gossip-n*-r*.txt")):
        m = re.fullmatch(r"gossip-n(\d+)-r(\d+)\.txt", path.name)
        if m:
            found.setdefault(int(m.group(1)), []).append(path)
    return found


def simulated_round(n: int, numel: int, spec: str, network: str, rounds: int = 3) -> float:
    """Simulated seconds per round of the in-process consensus with ``network``."""
    from choco.run import consensus

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


def simulated_training(args: Sequence[str], network: str) -> float:
    """The last ``sim_time_s`` of ``choco-train --backend local`` with ``args``."""
    from choco.run import train

    with tempfile.TemporaryDirectory() as tmp:
        argv = [*args, "--backend", "local", "--network", network, "--out", tmp + "/run",
                "--quiet"]
        if train.main(argv) != 0:
            raise SystemExit(f"the simulated training {' '.join(args)} failed")
        rows = [json.loads(line) for line in
                (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if line]
        return float(rows[-1]["sim_time_s"])


def gossip_rows(n: int, files: Sequence[Path], gbit: float, latency_us: float,
                in_process: bool = True) -> list[str]:
    """Rows of one ring size: the all-reduce, then per compressor the measured round
    against (1) every measured round simulated with that round's per-rank CPU times
    (:func:`round_on_clock`; medians over rounds and repeats) and (2) the in-process
    consensus under ``--network`` with the run's per-rank medians (:func:`gossip_network`)."""
    runs = [read(p) for p in files]
    head = runs[0]
    degree = head["degree"]
    link = Link(latency_us * 1e-6, gbit * TCP_PAYLOAD * 1e9 / 8)
    lines = [f"| **ring:{n}, d = {head['numel']:,} fp32, {len(runs)} repeats × "
             f"{head['rounds']} rounds** | | | | | |"]
    measured = [statistics.median(r["allreduce_ms"] for r in run["rows"]) for run in runs]
    sim_ar = 1e3 * allreduce_time(n, 4 * head["numel"], link)  # S: the fp32 vector's bytes
    lines.append(row_line("all-reduce (link only)", statistics.median(measured), sim_ar,
                          [error(sim_ar, m) for m in measured]))
    for k, first in enumerate(head["rows"]):
        meas, sims, errs, whole = [], [], [], []
        for run in runs:
            row = run["rows"][k]
            per = row["rounds_ms"]
            rounds = [round_on_clock(n, row["message_bytes"],
                                     [e[r] for e in per["encode"]],
                                     [d[r] for d in per["decode_update"]], gbit, latency_us)
                      for r in range(len(per["round"]))]
            meas += per["round"]
            sims += rounds
            errs.append(error(statistics.median(rounds), statistics.median(per["round"])))
            if in_process:
                whole.append(1e3 * simulated_round(
                    n, head["numel"], row["spec"], gossip_network(row, degree, gbit,
                                                                  latency_us)))
        lines.append(row_line(f"`{first['spec']}` round", statistics.median(meas),
                              statistics.median(sims), errs))
        if whole:
            m = statistics.median(r["rows"][k]["round_ms"] for r in runs)
            lines.append(row_line(f"`{first['spec']}`, in-process run (per-rank medians)", m,
                                  statistics.median(whole),
                                  [error(w, r["rows"][k]["round_ms"])
                                   for w, r in zip(whole, runs, strict=True)]))
    return lines


def train_folders(out: Path) -> dict[str, list[Path]]:
    """``{label: [repeat folders]}`` from ``train-{label}-r{K}/``, sorted by ``K``."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in out.glob("train-*-r*"):
        m = re.fullmatch(r"train-(.+)-r(\d+)", path.name)
        if m and path.is_dir():
            found.setdefault(m.group(1), []).append((int(m.group(2)), path))
    return {label: [p for _, p in sorted(runs)] for label, runs in sorted(found.items())}


def long_waits(timings: Sequence[dict], over_ms: float = 10.0) -> float:
    """Share of the ranks' rounds whose wait exceeded ``over_ms``."""
    waits = [w for t in timings for w in t.get("waits_ms", [])]
    return sum(w > over_ms for w in waits) / len(waits) if waits else 0.0


def train_rows(folders: Sequence[Path], gbit: float, latency_us: float) -> list[str]:
    """One row per training configuration: medians over its repeats (each simulated with
    its own ranks' times, :func:`train_network`), the per-repeat errors, and per repeat
    the spec and the share of rounds that waited over 10 ms (as an HTML comment)."""
    measured, simulated, notes = [], [], []
    args: list[str] = []
    for folder in folders:
        args = json.loads((folder / "args.json").read_text())
        timings = sorted((json.loads(p.read_text()) for p in folder.glob("timing-rank*.json")),
                         key=lambda t: t["rank"])
        if not timings:
            notes.append(f"<!-- {folder.name}: no timing files -->")
            continue
        network = train_network(timings, gbit, latency_us)
        measured.append(max(t["train_s"] for t in timings))
        simulated.append(simulated_training(args, network))
        notes.append(f"<!-- {folder.name}: {network}; rounds waiting > 10 ms: "
                     f"{100 * long_waits(timings):.1f} % -->")
    if not measured:
        return notes
    errs = [error(s_, m) for s_, m in zip(simulated, measured, strict=True)]
    what = f"training `{' '.join(args)}` ({len(measured)} repeats)"
    return [row_line(what, 1e3 * statistics.median(measured),
                     1e3 * statistics.median(simulated), errs), *notes]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("out", help="the folder sim_run.sh wrote")
    p.add_argument("--gbit", type=float, default=1.0, help="shaped rate per link, Gbit/s")
    p.add_argument("--latency-us", type=float, default=50.0, help="α per message, µs")
    args = p.parse_args(argv)
    out = Path(args.out)
    lines = [f"Every rank's link shaped to {args.gbit:g} Gbit/s (tbf); simulated with the "
             f"payload rate {args.gbit * TCP_PAYLOAD:.3f} Gbit/s (1448 of 1514 bytes per TCP "
             f"frame), latency {args.latency_us:g} µs and the CPU times each run measured "
             "itself."]
    if (out / "stream.json").exists():
        rate = json.loads((out / "stream.json").read_text())["payload_gbit_s"]
        lines.append(f"One TCP stream over a shaped link carried {rate:.3f} Gbit/s of payload.")
    if (out / "load.txt").exists():
        lines.append("Load while measuring: " + "; ".join(
            line.strip() for line in (out / "load.txt").read_text().splitlines() if line))
    lines += ["", *HEADER]
    for n, files in sorted(gossip_files(out).items()):
        lines += gossip_rows(n, files, args.gbit, args.latency_us)
    for folders in train_folders(out).values():
        lines += train_rows(folders, args.gbit, args.latency_us)
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

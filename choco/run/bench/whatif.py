"""``python -m choco.bench whatif``: at which link speed does compression pay? An α–β model.

The link model (docs/performance.md, "The whatif model"; the functions are the simulated
clock's, :mod:`choco.sim.model`, docs/simulation.md):

* every node has one full-duplex NIC of bandwidth ``β`` (bytes/s each way) into a
  non-blocking switch; a message of ``m`` bytes between two nodes costs ``α + m/β``
  (``α``: per-message latency, software included);
* **ring all-reduce** (reduce-scatter then all-gather) of ``S`` bytes:
  ``2(n−1) α + 2 (n−1)/n · S/β``, plus the reduction's own CPU time (``(n−1)/n · d`` adds,
  measured with a ``y.add_(x)`` probe);
* **gossip round**: a node sends its ``m``-byte message to its ``deg`` neighbours one after
  the other through its one NIC (no multicast), while the ``deg`` incoming messages arrive
  on the other direction of the same NIC: ``deg · (α + m/β)``;
* ``--link shared``: every node's traffic crosses one shared link of bandwidth ``β`` (the
  shaped loopback of experiments/netns/): a round takes (total bytes of all nodes) ``/ β``
  plus ``α`` per sequential message stage (one for gossip, ``2(n−1)`` for the all-reduce).

A training step costs ``T_compute`` (forward, backward, local optimizer step; ``--compute-ms``
or measured by running ``--compute-steps`` steps of ``--model`` here) plus, for gossip, the
CPU time of the round ``T_codec`` (one node's ``begin`` + ``finish`` on the model's per-tensor
sizes, measured here in-process) and the link time: ``sync`` adds them all; ``overlap``
(choco-train's default) hides the link time behind the next computation,
``T_codec + max(T_compute, T_link)``, which assumes the network progresses without the CPU
(an RDMA/offloading NIC; see the ``train`` benchmark for what MPICH over TCP does). The
all-reduce step (``AllReduceSGD``) is blocking: ``T_compute + T_reduce + T_allreduce``.

For every compressor and the all-reduce it prints the time per step at each bandwidth and
latency, the time to a target accuracy when ``--metrics SPEC=metrics.jsonl`` files give the
epochs needed, and the crossover bandwidth below which each compressor beats the all-reduce.

``--validate SHAPED.json`` instead compares the model with a measured
``python -m choco.bench gossip --json`` run on a slowed link (experiments/netns/run.sh).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ...compress import make_compressor, per_tensor
from ...errors import UsageError
from ...sim.model import Link, allreduce_time, gossip_time, step_time
from .gossip import check_positive, machine_line
from .specs import WHATIF, parse_specs

HELP = "α–β link model: time per step and crossover bandwidth of each compressor vs all-reduce"

GBIT = 1e9 / 8  # bytes per second in one Gbit/s


# ---------------------------------------------------------------------------- the model
# Link, message and all-reduce times and the per-step time: the simulated clock's model
# (choco.sim.model, docs/simulation.md), one set of functions for both.
#: bandwidth range searched for crossovers, bytes/s: 1 kbit/s .. 100 Tbit/s
BETA_RANGE = (1e3 / 8, 1e14 / 8)


def winning_ranges(n: int, degree: int, message: float, nbytes: float, compute: float,
                   codec: float, reduce: float, alpha: float, order: str,
                   shared: bool = False) -> list[tuple[float, float]]:
    """The bandwidth intervals (bytes/s, within :data:`BETA_RANGE`) where the gossip step
    is faster than the all-reduce step.

    In ``sync`` order the difference of the two step times is affine in ``1/β``, so there
    is at most one interval, starting at the bottom of the range. In ``overlap`` order it is
    not monotone: a message larger than the all-reduce's traffic (identity) loses at low β,
    wins once its link time hides behind the computation, and loses again at high β where
    only the codec's CPU time is left. The function scans a log grid of β and refines each
    sign change by bisection.
    """

    def gain(beta: float) -> float:  # > 0: gossip faster
        link = Link(alpha, beta, shared)
        ar = compute + reduce + allreduce_time(n, nbytes, link)
        g = step_time(compute, codec, gossip_time(n, degree, message, link), order)
        return ar - g

    def refine(lo: float, hi: float) -> float:  # gain changes sign between lo and hi
        wins_lo = gain(lo) > 0
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            if (gain(mid) > 0) == wins_lo:
                lo = mid
            else:
                hi = mid
            if hi / lo < 1 + 1e-12:
                break
        return math.sqrt(lo * hi)

    lo, hi = BETA_RANGE
    # the kinks of the overlap order (link time = compute) are grid points too
    kinks = [degree * message / compute] if compute > 0 and not shared else []
    if compute > 0 and shared:
        kinks = [n * degree * message / compute]
    steps = 600
    grid = sorted({lo * (hi / lo) ** (i / steps) for i in range(steps + 1)}
                  | {k for k in kinks if lo < k < hi})
    ranges: list[tuple[float, float]] = []
    start = lo if gain(lo) > 0 else None
    for a, b in itertools.pairwise(grid):
        if (gain(a) > 0) != (gain(b) > 0):
            edge = refine(a, b)
            if start is None:
                start = edge
            else:
                ranges.append((start, edge))
                start = None
    if start is not None:
        ranges.append((start, math.inf))
    return ranges


def crossover(n: int, degree: int, message: float, nbytes: float, compute: float,
              codec: float, reduce: float, alpha: float, order: str,
              shared: bool = False) -> float:
    """The highest bandwidth (bytes/s) at which the gossip step is still faster than the
    all-reduce step: ``inf`` if it is faster up to 100 Tbit/s, 0 if never
    (:func:`winning_ranges`)."""
    ranges = winning_ranges(n, degree, message, nbytes, compute, codec, reduce, alpha, order,
                            shared)
    return ranges[-1][1] if ranges else 0.0


# ---------------------------------------------------------------------------- measurements
def model_sizes(name: str) -> list[int]:
    """Per-tensor sizes of the model's parameters in the order choco-train gossips them."""
    from ...models import param_groups

    torch.manual_seed(0)
    model = _model(name)
    return [p.numel() for g in param_groups(model, 1e-4) for p in g["params"]]


def _model(name: str) -> torch.nn.Module:
    from ...models import make_model

    if name in ("mlp", "lenet"):
        return make_model(name, input_shape=(1, 8, 8) if name == "mlp" else (1, 28, 28),
                          num_classes=10)
    return make_model(name)


def measure_compute(name: str, batch_size: int, steps: int) -> float:
    """Seconds of forward + backward + SGD step of ``name`` (random data) here: the fastest
    of ``steps`` (the machine may be shared; the codec is timed the same way)."""
    from ...models import param_groups

    torch.manual_seed(0)
    model = _model(name)
    shape = (1, 8, 8) if name == "mlp" else (1, 28, 28) if name == "lenet" else (3, 32, 32)
    x = torch.randn(batch_size, *shape)
    y = torch.randint(0, 10, (batch_size,))
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9, nesterov=True)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def measure_add(numel: int, repeat: int = 7) -> float:
    """Seconds per element of ``y.add_(x)`` (the all-reduce's reduction) on this machine."""
    x, y = torch.randn(numel), torch.zeros(numel)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        y.add_(x)
        times.append(time.perf_counter() - start)
    return min(times) / numel


def measure_codec(compressors, sizes: list[int], n: int, family: str, rounds: int,
                  flat: bool = False) -> list[dict]:
    """One node's begin + finish (decode and update, wait excluded) per compressor, per
    tensor over ``sizes``, on an in-process ``family:n`` (:func:`gossip.bench_local`), the
    fastest of ``rounds``."""
    from ..plan import resolve_topology
    from .gossip import bench_local

    topo = resolve_topology(family, "metropolis", n)
    wrapped = compressors if flat else [per_tensor(q, sizes) for q in compressors]
    return bench_local(topo, wrapped, sum(sizes), rounds, 2, 0.5, stat="min")


def epochs_to_target(path: Path, target: float, key: str = "test_accuracy") -> int | None:
    """The first epoch whose ``key`` reaches ``target`` in a metrics.jsonl (None: never)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"--metrics must name a readable metrics.jsonl, got {path} "
                         f"({exc.strerror or exc}); pass the file of a choco-train run.") from None
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        value = row.get(key)
        if value is not None and value >= target:
            return int(row["epoch"])
    return None


def steps_per_epoch(path: Path, given: int | None) -> int:
    """``--steps-per-epoch``, else ``steps_per_epoch`` of the config.json beside ``path``."""
    if given:
        return given
    config = path.parent / "config.json"
    try:
        return int(json.loads(config.read_text())["steps_per_epoch"])
    except (OSError, KeyError, ValueError):
        raise UsageError(f"--metrics {path} needs the steps per epoch, got no "
                         f"steps_per_epoch in {config}; pass --steps-per-epoch.") from None


# ---------------------------------------------------------------------------- CLI
def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise UsageError(f"{what} must be a comma-separated list of numbers >= 0, got "
                         f"{text!r}; e.g. {what} 1,10,100.")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mlp", help="model whose per-tensor sizes are sent "
                   "(mlp = the default task, resnet20, ...)")
    p.add_argument("--batch-size", type=int, default=32, help="per node, for the compute")
    p.add_argument("--compute-ms", type=float, default=None,
                   help="compute time per step; default: measured here")
    p.add_argument("--compute-steps", type=int, default=5, help="steps to measure compute")
    p.add_argument("--specs", default=",".join(WHATIF), help="comma-separated compressors")
    p.add_argument("--nodes", type=int, default=8, help="n")
    p.add_argument("--family", default="ring", help="topology family sized by n")
    p.add_argument("--bandwidths", default="1,10,100", help="Gbit/s")
    p.add_argument("--latencies", default="1,10,50", help="µs per message")
    p.add_argument("--order", choices=("overlap", "sync"), default="overlap",
                   help="overlap: the exchange is in flight during the next step; sync: "
                   "the step waits for it")
    p.add_argument("--link", choices=("nic", "shared"), default="nic",
                   help="nic: one NIC per node; shared: one link for all traffic")
    p.add_argument("--codec-rounds", type=int, default=5, help="rounds to time the codec")
    p.add_argument("--flat", action="store_true",
                   help="compress the parameters as one flat vector (choco-train "
                   "--per-tensor false) instead of per tensor")
    p.add_argument("--metrics", action="append", default=[], metavar="SPEC=PATH",
                   help="metrics.jsonl of a run with compressor SPEC (or allreduce=PATH)")
    p.add_argument("--target", type=float, default=None, help="test accuracy to reach")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="steps per epoch of the --metrics runs (default: read from the "
                   "config.json beside each metrics.jsonl)")
    p.add_argument("--validate", default=None, metavar="SHAPED.json",
                   help="compare with a `choco.bench gossip --json` run on a shaped link")
    p.add_argument("--calibrate", default=None, metavar="UNSHAPED.json",
                   help="with --validate: CPU times from an unshaped run")
    p.add_argument("--bandwidth", type=float, default=1.0,
                   help="with --validate: the shaped rate, Gbit/s")
    p.add_argument("--latency-us", type=float, default=50.0,
                   help="with --validate: α per message stage, µs")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")


def _fmt_bw(beta: float) -> str:
    if math.isinf(beta):
        return "always"
    if beta == 0:
        return "never"
    gbit = beta / GBIT
    return f"{gbit:.3g} Gbit/s"


def _fmt_ranges(ranges: list[tuple[float, float]]) -> str:
    if not ranges:
        return "never"
    parts = []
    for lo, hi in ranges:
        if lo <= BETA_RANGE[0] and math.isinf(hi):
            parts.append("always")
        elif lo <= BETA_RANGE[0]:
            parts.append(f"below {_fmt_bw(hi)}")
        elif math.isinf(hi):
            parts.append(f"above {_fmt_bw(lo)}")
        else:
            parts.append(f"{_fmt_bw(lo)} – {_fmt_bw(hi)}")
    return ", ".join(parts)


def run_model(args: argparse.Namespace) -> int:
    compressors = parse_specs(args.specs)
    bandwidths = _floats(args.bandwidths, "--bandwidths")
    latencies = _floats(args.latencies, "--latencies")
    check_positive(("--nodes", args.nodes, 2, 8), ("--batch-size", args.batch_size, 1, 32),
                   ("--compute-steps", args.compute_steps, 1, 5),
                   ("--codec-rounds", args.codec_rounds, 1, 5))
    if min(bandwidths) <= 0:
        raise UsageError(f"--bandwidths must be > 0 Gbit/s, got {args.bandwidths!r}; e.g. "
                         "--bandwidths 1,10,100.")
    if args.compute_ms is not None and args.compute_ms < 0:
        raise UsageError(f"--compute-ms must be >= 0, got {args.compute_ms}; e.g. "
                         "--compute-ms 100, or leave it out to measure it here.")
    metrics = {}
    for item in args.metrics:
        spec, sep, path = item.partition("=")
        if not sep or not path:
            raise UsageError(f"--metrics takes SPEC=PATH, got {item!r}; e.g. --metrics "
                             "sign=runs/sign/metrics.jsonl.")
        metrics[spec.strip()] = Path(path)
    if metrics and args.target is None:
        raise UsageError("--metrics needs --target (the test accuracy to reach), got none; "
                         "pass e.g. --target 0.9.")
    from ..plan import resolve_topology

    n = args.nodes
    degree = max(len(resolve_topology(args.family, "metropolis", n).neighbors(i))
                 for i in range(n))
    sizes = model_sizes(args.model)
    params = sum(sizes)
    torch.set_num_threads(1)
    compute = (args.compute_ms / 1e3 if args.compute_ms is not None
               else measure_compute(args.model, args.batch_size, args.compute_steps))
    reduce = (n - 1) / n * params * measure_add(params)
    codec_rows = measure_codec(compressors, sizes, n, args.family, args.codec_rounds,
                               args.flat)
    dense = 4 * params
    entries = [{"spec": "allreduce", "bytes": dense, "codec": reduce}]
    for q, r in zip(compressors, codec_rows, strict=True):
        sent = q if args.flat else per_tensor(q, sizes)
        entries.append({"spec": q.spec, "bytes": sent.nbytes(params),
                        "codec": (r["round_ms"] - r["wait_ms"]) / 1e3})
    grid: list[dict[str, Any]] = []
    for gbit in bandwidths:
        for us in latencies:
            link = Link(us * 1e-6, gbit * GBIT, args.link == "shared")
            cells = {}
            for e in entries:
                if e["spec"] == "allreduce":
                    t = compute + reduce + allreduce_time(n, dense, link)
                else:
                    t = step_time(compute, e["codec"],
                                  gossip_time(n, degree, e["bytes"], link), args.order)
                cells[e["spec"]] = t
            grid.append({"gbit": gbit, "us": us, "step_s": cells})
    for e in entries[1:]:
        e["wins"] = {us: winning_ranges(n, degree, e["bytes"], dense, compute, e["codec"],
                                        reduce, us * 1e-6, args.order, args.link == "shared")
                     for us in latencies}
        e["crossover"] = {us: r[-1][1] if r else 0.0 for us, r in e["wins"].items()}
    names = [e["spec"] for e in entries]
    source = ("given" if args.compute_ms is not None
              else f"measured here, 1 thread, best of {args.compute_steps}")
    lines = [machine_line(None),
             f"{args.model}: {params:,} parameters in {len(sizes)} tensors; n = {n} "
             f"({args.family}, degree {degree}); order {args.order}; link {args.link}; "
             f"compute {1e3 * compute:.3f} ms/step "
             f"({source}); gossip codec = one node's begin + finish "
             f"measured here ({'one flat vector' if args.flat else 'per tensor'}, best of "
             f"{args.codec_rounds} rounds)", "",
             "| | bytes/node/step | codec ms |", "|---|---:|---:|"]
    for e in entries:
        sent = (2 * (n - 1) / n * e["bytes"] if e["spec"] == "allreduce"
                else degree * e["bytes"])
        lines.append(f"| `{e['spec']}` | {sent:,.0f} | {1e3 * e['codec']:.3f} |")
    lines += ["", "time per step, ms:", "",
              "| Gbit/s | α µs | " + " | ".join(f"`{s}`" for s in names) + " |",
              "|---:|---:|" + "---:|" * len(names)]
    for g in grid:
        lines.append(f"| {g['gbit']:g} | {g['us']:g} | "
                     + " | ".join(f"{1e3 * g['step_s'][s]:.3f}" for s in names) + " |")
    lines += ["", "crossover: the bandwidths at which the compressor's step is faster than the "
              "all-reduce's (below X: from 1 kbit/s up to X):", "",
              "| spec | " + " | ".join(f"α = {us:g} µs" for us in latencies) + " |",
              "|---|" + "---:|" * len(latencies)]
    for e in entries[1:]:
        lines.append(f"| `{e['spec']}` | "
                     + " | ".join(_fmt_ranges(e["wins"][us]) for us in latencies) + " |")
    target_rows = []
    if metrics:
        lines += ["", f"time to test accuracy {args.target:g} (epochs from the metrics files), "
                  "s:", "", "| Gbit/s | α µs | " + " | ".join(f"`{s}`" for s in metrics) + " |",
                  "|---:|---:|" + "---:|" * len(metrics)]
        steps: dict[str, float | None] = {}
        for spec, path in metrics.items():
            epochs = epochs_to_target(path, args.target)
            steps[spec] = None if epochs is None else epochs * steps_per_epoch(
                path, args.steps_per_epoch)
        for g in grid:
            texts: list[str] = []
            for spec in metrics:
                key = spec if spec in g["step_s"] else make_compressor(spec).spec
                count = steps[spec]
                if count is None or key not in g["step_s"]:
                    texts.append("not reached" if count is None else "not modelled")
                else:
                    texts.append(f"{count * g['step_s'][key]:.1f}")
            lines.append(f"| {g['gbit']:g} | {g['us']:g} | " + " | ".join(texts) + " |")
            target_rows.append({"gbit": g["gbit"], "us": g["us"], "cells": texts})
    print("\n".join(lines), flush=True)
    if args.json:
        print(json.dumps({"model": args.model, "params": params, "n": n, "degree": degree,
                          "compute_s": compute, "entries": entries, "grid": grid,
                          "order": args.order, "link": args.link,
                          "time_to_target": target_rows}, default=str), flush=True)
    return 0


def _read_bench(path: str) -> dict:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"--validate/--calibrate must name a readable file, got {path} "
                         f"({exc.strerror or exc}); write it with `python -m choco.bench "
                         "gossip --json > FILE`.") from None
    for line in reversed(lines):
        if line.startswith("{"):
            data = json.loads(line)
            if data.get("mode") == "mpi" or "allreduce_ms" in str(data):
                return data
    raise UsageError(f"--validate/--calibrate must name the output of an MPI run of "
                     f"`python -m choco.bench gossip --json`, got {path} without its JSON "
                     "line; run it again with --json under mpiexec.")


def validate(shaped: dict, calibration: dict | None, gbit: float, alpha: float) -> list[dict]:
    """Predicted vs measured round times of a shaped-link gossip run (one shared link)."""
    n, d, degree = shaped["n"], shaped["numel"], shaped["degree"]
    link = Link(alpha, gbit * GBIT, shared=True)
    cpu = {r["spec"]: r for r in (calibration or shaped)["rows"]}
    out = [{"what": "allreduce", "measured_ms": statistics.median(
                r["allreduce_ms"] for r in shaped["rows"]),
            "link_ms": 1e3 * allreduce_time(n, 4 * d, link), "cpu_ms": 0.0}]
    for r in shaped["rows"]:
        c = cpu.get(r["spec"], r)
        out.append({"what": r["spec"], "measured_ms": r["round_ms"],
                    "link_ms": 1e3 * gossip_time(n, degree, r["message_bytes"], link),
                    "cpu_ms": c.get("cpu_max_ms", c["encode_ms"] + c["decode_update_ms"])})
    for row in out:
        row["predicted_ms"] = row["link_ms"] + row["cpu_ms"]
        row["error"] = (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]
    return out


def run_validate(args: argparse.Namespace) -> int:
    shaped = _read_bench(args.validate)
    calibration = _read_bench(args.calibrate) if args.calibrate else None
    rows = validate(shaped, calibration, args.bandwidth, args.latency_us * 1e-6)
    lines = [f"shaped link: {args.bandwidth:g} Gbit/s shared by all {shaped['n']} ranks, "
             f"{shaped['topology']}, d = {shaped['numel']:,}; predicted = bytes on the link / β "
             f"+ α ({args.latency_us:g} µs per stage) + CPU (encode + decode/update of the busiest "
             f"rank, {'from the unshaped run' if calibration else 'from the shaped run itself'}"
             ")",
             shaped.get("machine", ""), "",
             "| round | measured ms | link ms | CPU ms | predicted ms | error |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['what']}` | {r['measured_ms']:.1f} | {r['link_ms']:.1f} | "
                     f"{r['cpu_ms']:.1f} | {r['predicted_ms']:.1f} | {100 * r['error']:+.1f}% |")
    print("\n".join(lines), flush=True)
    if args.json:
        print(json.dumps({"rows": rows}), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.validate:
        return run_validate(args)
    return run_model(args)

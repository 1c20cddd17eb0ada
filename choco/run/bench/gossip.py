"""``python -m choco.bench gossip``: one CHOCO round against a dense fp32 all-reduce.

Under ``mpiexec -n N`` or ``torchrun --nproc-per-node N`` (one node per rank), for each
compressor spec, the benchmark interleaves ``--rounds`` timed rounds of

* one CHOCO-Gossip round, :meth:`ChocoGossip.begin` then :meth:`ChocoGossip.finish`, over the
  launch's communicator (:class:`~choco.comm.mpi.MPICommunicator` or
  :class:`~choco.comm.torchdist.TorchCommunicator`) on ``--topology`` (``ring:N`` by
  default), and
* the launcher library's own dense all-reduce (SUM) of an fp32 vector of the same length on
  the same ranks (``MPI_Allreduce``, or ``torch.distributed.all_reduce`` over gloo: the real
  all-reduce of the library, :attr:`choco.run.launch.World.allreduce_sum`),

each after a barrier, alternating which of the two goes first. A round's time is the
time of its slowest rank (the round is a collective); the table reports the median over the
rounds, the ratio round / all-reduce, the bytes one node sends per round, and the split of the
round into encode (``begin``), exchange wait (the time spent inside the round's
``NeighbourRound.wait``, which the benchmark wraps with a timer) and decode + update
(``finish`` minus the wait), each the median over rounds of the mean over ranks.

Without a launcher (``--backend local``) it runs ``--nodes`` nodes in this process on a
:class:`~choco.comm.LocalNetwork` in lock step and times node 0's ``begin`` and ``finish``
against a memory-bandwidth probe (``y.copy_(x)`` of the same length, interleaved): the
round's time is compared with the time the node's *minimum memory traffic*
(:func:`min_traffic`, docs/performance.md) takes at the copy's bandwidth.

``--numel`` is checked against the memory available on this machine for every node that
runs here, before anything is allocated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ...compress.base import Compressor
from ...errors import UsageError
from ...gossip import ChocoGossip, prepare_round
from ..cli import add_backend_argument
from ..files import check_memory, format_bytes, largest, memory_limit
from ..launch import World, refuse_local_under_mpi, resolve_backend, run_world
from .compressors import cpu_model
from .specs import GOSSIP, parse_specs

HELP = "time one CHOCO gossip round per compressor against a dense fp32 MPI_Allreduce"

#: bytes written before each memory-bandwidth probe to push its vectors out of the caches
EVICT_BYTES = 64 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_backend_argument(p)
    p.add_argument("--topology", default=None,
                   help="static graph spec (no schedules); default ring:N (N = ranks, or "
                   "--nodes in-process)")
    p.add_argument("--mixing", default="metropolis", help="mixing rule of the topology")
    p.add_argument("--nodes", type=int, default=8, help="nodes of the in-process network "
                   "(--backend local only)")
    p.add_argument("--numel", type=int, default=2_000_000, help="vector length d (fp32)")
    p.add_argument("--specs", default=",".join(GOSSIP),
                   help="comma-separated compressor specs")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per compressor")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic over the rounds (min: robust to other load on the machine)")
    p.add_argument("--gamma", type=float, default=0.5, help="consensus step size γ")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: cores / ranks on the node "
                   "under mpiexec or torchrun, 1 in-process)")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")


# ---------------------------------------------------------------------------- shared helpers
def machine_line(mpi: str | None = None, label: str = "MPI") -> str:
    """CPU model, cores, torch (threads), numpy, MPI library, today's date and the load
    average at the start (other work on a shared machine), one line."""
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load average unknown"
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads/process), numpy {np.__version__}, "
            f"{label}: {mpi or 'not used'}; {datetime.date.today().isoformat()}, {load}")


def node_memory(numel: int, degree: int, compressors: Sequence[Compressor],
                dense_buffers: int = 2) -> int:
    """Bytes one node of the benchmark holds at once.

    Five fp32 vectors of the gossip (x, x̂, s, the consensus buffer and the ``x − x̂`` that
    ``begin`` encodes), ``dense_buffers`` more (the all-reduce's send and receive buffers),
    and the largest message ``degree + 2`` times (own, one per neighbour, one in the making).
    """
    message = max(q.nbytes(numel) for q in compressors)
    return (5 + dense_buffers) * 4 * numel + (degree + 2) * message


def memory_problem(numel: int, nodes_here: int,
                   per_node: Callable[[int], int]) -> str | None:
    """Why ``nodes_here`` nodes of ``per_node(numel)`` bytes exceed the memory limit of
    :func:`choco.run.files.memory_limit` (``CHOCO_MEMORY_LIMIT``), or None if they fit."""
    limit, _ = memory_limit()
    need = nodes_here * per_node(numel)
    if need <= limit:
        return None
    most = largest(lambda k: nodes_here * per_node(k) <= limit, high=numel)
    try:
        check_memory(need, f"--numel {numel:,}",
                     f"{nodes_here} node(s) on this machine × {format_bytes(per_node(numel))}",
                     f"lower --numel to at most {most:,} or run fewer ranks here")
    except UsageError as exc:
        return str(exc)
    return None


def ranks_on_this_host(world: World) -> int:
    """How many ranks of ``world`` run on this host (by host name: with
    ``MPIR_CVAR_NOLOCAL=1`` MPICH reports every rank as its own shared-memory node)."""
    import platform

    names = world.comm.allgather_object(platform.node())
    return names.count(platform.node())


def vendor_line(world: World) -> tuple[str, str]:
    """The launch's communication library (whitespace collapsed) and its label, for
    :func:`machine_line`."""
    return " ".join(world.vendor.split()), "MPI" if world.backend == "mpi" else "comm"


def timed_wait(gossip: ChocoGossip, sink: list[float]) -> None:
    """Wrap ``gossip.finish`` so that each call appends the seconds it spent waiting for
    the exchange (:attr:`NeighbourRound.waited <choco.neighbourhood.NeighbourRound.waited>`:
    the whole wait, or the waits between the messages decoded as they arrive) to ``sink``."""
    inner = gossip.finish

    def finish(x):
        try:
            return inner(x)
        finally:
            sink.append(gossip.round.waited)

    gossip.finish = finish  # type: ignore[method-assign]


def _sparse_ratio(spec: str) -> tuple[float, bool] | None:
    """``(R, selection reads all of x)`` for sparsifier specs (also ``A+B``, ``scaled``)."""
    m = re.match(r"^(?:scaled\()?(topk|randk|randblock):([0-9.eE+-]+)", spec)
    if m is None:
        return None
    return float(m.group(2)), m.group(1) == "topk"


def min_traffic(q: Compressor, numel: int, degree: int) -> dict[str, float]:
    """Minimum memory traffic of one node's round, in bytes per element of ``x`` (fp32).

    Each step is one pass that reads and writes only what it must (no temporaries), with
    ``b`` = message bytes per element: encode reads ``x`` and ``x̂`` (8 B; a random
    sparsifier reads only its ``k`` entries, 8R) and writes the message (b); the own decode
    adds ``q`` into ``x̂`` and into ``s`` (read-modify-write 8 B each for a dense message,
    8R on the support of a sparse one, plus reading the message twice); each neighbour's
    decode-add into ``s`` is 8 (or 8R) + b; the consensus update ``x += γ (s − x̂)`` reads
    x, s, x̂ and writes x (16 B). See docs/performance.md.
    """
    b = q.nbytes(numel) / numel
    sparse = _sparse_ratio(q.spec)
    if sparse is None:
        touch, encode_read = 8.0, 8.0
    else:
        ratio, reads_all = sparse
        touch, encode_read = 8.0 * ratio, 8.0 if reads_all else 8.0 * ratio
    rows = {"encode": encode_read + b, "own_decode": 2 * (touch + b),
            "neighbour_decode": touch + b, "update": 16.0}
    rows["total"] = (rows["encode"] + rows["own_decode"] + degree * rows["neighbour_decode"]
                     + rows["update"])
    return rows


def check_positive(*options: tuple[str, int | None, int, int]) -> None:
    """``(option, value, minimum, example)``: refuse a value below its minimum (None: unset)."""
    for option, value, minimum, example in options:
        if value is not None and value < minimum:
            raise UsageError(f"{option} must be >= {minimum}, got {value}; e.g. "
                             f"{option} {example}.")


def _check_counts(args: argparse.Namespace) -> None:
    check_positive(("--numel", args.numel, 1, 2_000_000), ("--rounds", args.rounds, 1, 30),
                   ("--warmup", args.warmup, 0, 3), ("--threads", args.threads, 1, 1))


def _topology(spec: str | None, mixing: str, n: int, mpi: bool):
    from ..plan import resolve_topology

    topo = resolve_topology(spec or "ring", mixing, n, mpi=mpi)
    if topo.time_varying or topo.pga_every:
        raise UsageError(
            f"python -m choco.bench gossip times one round of a fixed graph's CHOCO-Gossip, "
            f"got --topology {topo.spec}, a schedule (peers that change every round, or "
            "+pga global averages); give a static topology (ring, torus, exponential, ...), "
            f"or measure the schedule's rounds and bytes with choco-consensus --topology "
            f"{topo.spec}.")
    return topo


# ---------------------------------------------------------------------------- one node per rank
def _bench_world_spec(world: World, topo, q: Compressor, args) -> np.ndarray:
    """This rank's samples for one spec: rows of (begin, wait, rest, round, allreduce) s."""
    rank = world.rank
    comm = world.node(topo.neighbors(rank))
    gossip = ChocoGossip(comm, topo.W[rank], q, args.gamma, seed=0)
    waits: list[float] = []
    timed_wait(gossip, waits)
    x = torch.randn(args.numel, generator=torch.Generator().manual_seed(1000 + rank))
    send = x.numpy().copy()
    recv = np.empty_like(send)
    samples = np.zeros((args.rounds, 5))
    dense_sum = world.allreduce_sum
    if dense_sum is None:  # pragma: no cover - every launch's World has one
        raise UsageError(f"the {world.backend} launch offers no dense all-reduce to compare "
                         "with; run the benchmark under mpiexec or torchrun.")

    def allreduce() -> float:
        world.comm.barrier()
        start = time.perf_counter()
        dense_sum(send, recv)
        return time.perf_counter() - start

    def gossip_round() -> tuple[float, float, float]:
        world.comm.barrier()
        start = time.perf_counter()
        gossip.begin(x)
        mid = time.perf_counter()
        gossip.finish(x)
        return start, mid, time.perf_counter()

    for r in range(args.warmup + args.rounds):
        if r % 2 == 0:
            ta = allreduce()
            t0, t1, t2 = gossip_round()
        else:
            t0, t1, t2 = gossip_round()
            ta = allreduce()
        if r >= args.warmup:
            w = waits[-1]
            samples[r - args.warmup] = (t1 - t0, w, t2 - t1 - w, t2 - t0, ta)
    comm.close()
    return samples


def summarize_mpi(samples: np.ndarray, stat: str = "median") -> dict[str, float]:
    """Medians (ms) from ``(ranks, rounds, 5)`` samples: a round's time is its slowest
    rank's; the split is the mean over ranks; ``cpu_max_ms`` is the CPU part (encode +
    decode/update) of the rank with the most; the ratio is of the medians;
    ``rank_encode_ms`` and ``rank_decode_update_ms`` are each rank's own medians, and
    ``rounds_ms`` every rank's encode and decode+update in every round and every round's
    time (its slowest rank's)."""
    round_max = samples[:, :, 3].max(axis=0)
    allreduce_max = samples[:, :, 4].max(axis=0)
    split = samples[:, :, :3].mean(axis=0)
    cpu_max = (samples[:, :, 0] + samples[:, :, 2]).max(axis=0)
    med = statistics.median if stat == "median" else min
    out = {"encode_ms": 1e3 * med(split[:, 0]), "wait_ms": 1e3 * med(split[:, 1]),
           "decode_update_ms": 1e3 * med(split[:, 2]), "round_ms": 1e3 * med(round_max),
           "allreduce_ms": 1e3 * med(allreduce_max), "cpu_max_ms": 1e3 * med(cpu_max)}
    out["ratio"] = out["round_ms"] / out["allreduce_ms"]
    # each rank's own encode and decode+update (the shaped-link validation simulates them)
    by_rank = np.median(samples, axis=1) if stat == "median" else samples.min(axis=1)
    out["rank_encode_ms"] = [1e3 * float(v) for v in by_rank[:, 0]]
    out["rank_decode_update_ms"] = [1e3 * float(v) for v in by_rank[:, 2]]
    out["rounds_ms"] = {"encode": (1e3 * samples[:, :, 0]).tolist(),  # [rank][round]
                        "decode_update": (1e3 * samples[:, :, 2]).tolist(),
                        "round": (1e3 * samples[:, :, 3].max(axis=0)).tolist()}
    return out


def mpi_table(rows: list[dict], head: dict) -> str:
    n, d = head["n"], head["numel"]
    lines = [
        head["machine"],
        f"n = {n} ranks, {head['topology']} (degree {head['degree']}), d = {d:,} fp32; "
        f"{head['stat']} of {head['rounds']} rounds, a barrier before each, a round timed on its "
        f"slowest rank; all-reduce = {head['allreduce']} of the same fp32 vector "
        f"({4 * d:,} B; a ring all-reduce sends {head['allreduce_bytes']:,} B per node)",
        "",
        "| spec | bytes/node/round | encode (begin) ms | exchange wait ms | decode+update ms "
        "| round ms | allreduce ms | round/allreduce |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['spec']}` | {r['bytes_per_node']:,} | {r['encode_ms']:.2f} | "
            f"{r['wait_ms']:.2f} | {r['decode_update_ms']:.2f} | {r['round_ms']:.2f} | "
            f"{r['allreduce_ms']:.2f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def run_world_bench(args: argparse.Namespace, world: World) -> int:
    """The benchmark on every rank of an MPI or torchrun launch; rank 0 prints."""
    rank, size = world.rank, world.size
    _check_counts(args)
    compressors = parse_specs(args.specs)
    topo = _topology(args.topology, args.mixing, size, mpi=True)
    degree = max(len(topo.neighbors(i)) for i in range(topo.n))
    here = ranks_on_this_host(world)
    problem = memory_problem(args.numel, here,
                             lambda d: node_memory(d, degree, compressors)) \
        if rank == 0 else None
    problem = world.comm.allgather_object(problem)[0]  # one verdict, raised on every rank
    if problem:
        raise UsageError(problem)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // here))
    rows = []
    for q in compressors:
        samples = _bench_world_spec(world, topo, q, args)
        gathered = world.comm.allgather(samples)
        if rank == 0:
            message = q.nbytes(args.numel)
            rows.append({"spec": q.spec, "message_bytes": message,
                         "bytes_per_node": message * degree,
                         **summarize_mpi(gathered, args.stat)})
    if rank == 0:
        head = {"machine": machine_line(*vendor_line(world)), "n": size,
                "topology": topo.spec, "degree": degree, "numel": args.numel,
                "rounds": args.rounds, "stat": args.stat,
                "allreduce_bytes": round(2 * (size - 1) / size * 4 * args.numel)}
        print(mpi_table(rows, {**head, "allreduce": world.allreduce_name}), flush=True)
        if args.json:
            print(json.dumps({"mode": world.backend, **head, "rows": rows}), flush=True)
    return 0


# ---------------------------------------------------------------------------- in-process
def bench_local(topo, compressors: Sequence[Compressor], numel: int, rounds: int,
                warmup: int, gamma: float, stat: str = "median") -> list[dict]:
    """Node 0's begin / finish on an in-process network, with a ``y.copy_(x)`` probe."""
    from ...comm.local import LocalNetwork

    n = topo.n
    degree = len(topo.neighbors(0))
    probe_x = torch.randn(numel, generator=torch.Generator().manual_seed(7))
    probe_y = torch.zeros_like(probe_x)
    # written before each probe so that the copy starts from memory, not from the cache,
    # as node 0's vectors do after the other nodes' turns
    evict = torch.zeros(EVICT_BYTES // 4)
    rows = []
    for q in compressors:
        net = LocalNetwork([topo.neighbors(i) for i in range(n)])
        gossips = [ChocoGossip(c, topo.W[c.rank], q, gamma, seed=0) for c in net.comms]
        waits: list[float] = []
        timed_wait(gossips[0], waits)
        gen = torch.Generator().manual_seed(11)
        xs = [torch.randn(numel, generator=gen) for _ in range(n)]
        enc, fin, wt, copy = [], [], [], []
        for r in range(warmup + rounds):
            evict.fill_(float(r))
            start = time.perf_counter()
            probe_y.copy_(probe_x)
            c = time.perf_counter() - start
            t_begin = t_finish = 0.0
            prepare_round(gossips)
            for i, (g, x) in enumerate(zip(gossips, xs, strict=True)):
                start = time.perf_counter()
                g.begin(x)
                if i == 0:
                    t_begin = time.perf_counter() - start
            for i, (g, x) in enumerate(zip(gossips, xs, strict=True)):
                start = time.perf_counter()
                g.finish(x)
                if i == 0:
                    t_finish = time.perf_counter() - start
            if r >= warmup:
                enc.append(t_begin)
                fin.append(t_finish)
                wt.append(waits[-1])
                copy.append(c)
        med = statistics.median if stat == "median" else min
        e, f, w, c = med(enc), med(fin), med(wt), med(copy)
        traffic = min_traffic(q, numel, degree)
        bandwidth = 8 * numel / c  # bytes read + written per second by y.copy_(x)
        min_s = traffic["total"] * numel / bandwidth
        rows.append({
            "spec": q.spec, "message_bytes": q.nbytes(numel),
            "bytes_per_node": q.nbytes(numel) * degree, "encode_ms": 1e3 * e,
            "wait_ms": 1e3 * w, "decode_update_ms": 1e3 * (f - w), "round_ms": 1e3 * (e + f),
            "copy_ms": 1e3 * c, "bandwidth_gbs": bandwidth / 1e9,
            "traffic_bytes_per_elem": traffic, "min_traffic_ms": 1e3 * min_s,
            "ratio_to_min": (e + f) / min_s,
        })
        del gossips, xs, net
    return rows


def traffic_table(compressors: Sequence[Compressor], numel: int, degree: int) -> str:
    """Minimum memory traffic per element of one node's round (:func:`min_traffic`)."""
    lines = [f"minimum memory traffic of one node's round, bytes per element of x (fp32), "
             f"degree {degree}:", "",
             "| spec | encode | own decode (x̂, s) | each neighbour's decode | update | total |",
             "|---|---:|---:|---:|---:|---:|"]
    for q in compressors:
        t = min_traffic(q, numel, degree)
        lines.append(f"| `{q.spec}` | {t['encode']:.3g} | {t['own_decode']:.3g} | "
                     f"{t['neighbour_decode']:.3g} | {t['update']:.3g} | {t['total']:.3g} |")
    return "\n".join(lines)


def local_table(rows: list[dict], head: dict) -> str:
    c = statistics.median(r["copy_ms"] for r in rows)
    bw = statistics.median(r["bandwidth_gbs"] for r in rows)
    lines = [
        head["machine"],
        f"in-process: {head['topology']} (degree {head['degree']}), d = {head['numel']:,} "
        f"fp32, node 0's round, {head['stat']} of {head['rounds']} rounds; probe y.copy_(x) from "
        f"memory (caches flushed) {c:.2f} ms = {bw:.1f} GB/s (read + write)",
        "",
        "| spec | bytes/node/round | encode (begin) ms | decode+update ms | round ms | "
        "min traffic B/elem | min-traffic ms | round / min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['spec']}` | {r['bytes_per_node']:,} | {r['encode_ms']:.2f} | "
            f"{r['decode_update_ms']:.2f} | {r['round_ms']:.2f} | "
            f"{r['traffic_bytes_per_elem']['total']:.3g} | {r['min_traffic_ms']:.2f} | "
            f"{r['ratio_to_min']:.1f} |")
    return "\n".join(lines)


def run_local_bench(args: argparse.Namespace) -> int:
    refuse_local_under_mpi()
    _check_counts(args)
    compressors = parse_specs(args.specs)
    check_positive(("--nodes", args.nodes, 2, 8))
    topo = _topology(args.topology, args.mixing, args.nodes, mpi=False)
    degree = max(len(topo.neighbors(i)) for i in range(topo.n))
    problem = memory_problem(args.numel, topo.n + 1,
                             lambda d: node_memory(d, degree, compressors, dense_buffers=0))
    if problem:
        raise UsageError(problem)
    torch.set_num_threads(args.threads or 1)  # node 0 runs in this one thread
    rows = bench_local(topo, compressors, args.numel, args.rounds, args.warmup, args.gamma,
                       args.stat)
    head = {"machine": machine_line(None), "topology": topo.spec, "n": topo.n,
            "degree": len(topo.neighbors(0)), "numel": args.numel, "rounds": args.rounds,
            "stat": args.stat}
    print(traffic_table(compressors, args.numel, head["degree"]), flush=True)
    print()
    print(local_table(rows, head), flush=True)
    if args.json:
        print(json.dumps({"mode": "local", **head, "rows": rows}), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """``--backend``: local (in this process), or one node per rank of mpiexec/torchrun."""
    backend = resolve_backend(args.backend)
    if backend == "local":
        return run_local_bench(args)
    return run_world(backend, lambda world: run_world_bench(args, world))

"""``python -m choco.consensus``: CHOCO-Gossip alone, the average-consensus experiment.

Every node ``i`` starts from row ``i`` of an ``(n, d)`` array ``X0`` and runs ``T`` rounds of
CHOCO-Gossip (Alg. 1 of arXiv:1902.00340); the nodes should agree on the mean ``x̄⁰`` of the
rows. The output ``.npz`` holds

* ``x``: the final ``(n, d)`` array,
* ``error``: length ``T + 1``, ``error_t = (1/n) Σ_i ||x_i^t - x̄⁰||²``,
* ``bytes_sent``: length ``n``, payload bytes each node put on the wire (message length ×
  number of neighbours, summed over rounds).

With no options: sign compression on a ring of 8 nodes, γ from the tuner, 500 rounds, from a
generated ``X0`` (standard normal, ``--dim`` columns, ``--seed``), output ``consensus.npz``.
The output is checked before anything runs: it must not be an input (``--init``, a
``file:`` topology), and an existing file is replaced only with ``--overwrite``; a run
whose memory estimate exceeds the limit (:func:`choco.run.files.memory_limit`) is refused::

    python -m choco.consensus
    python -m choco.consensus --topology ring:8 --compressor sign --gamma 0.5 \\
        --steps 500 --init X0.npy --out out.npz
    mpiexec -n 8 python -m choco.consensus ...       # one rank per node, same result
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from topologies import Schedule, Topology, parse_topology

from .. import sim
from ..batched import BatchedChocoGossip
from ..comm.base import Communicator
from ..compress import available, make_compressor
from ..compress.base import Compressor
from ..compress.batch import BatchCodec, batch_codec
from ..compress.stateful import is_stateful
from ..errors import UsageError
from ..gossip import check_gamma, lockstep
from ..sim.clock import LockstepClock, NetworkClock
from ..timevarying import make_choco_gossip
from .cli import (
    ArgumentParser,
    HelpFormatter,
    add_backend_argument,
    add_gossip_arguments,
    add_version_argument,
    prog_name,
    setup_output,
)
from .files import (
    atomic_savez,
    check_memory,
    check_output_file,
    largest,
    load_npy,
    memory_limit,
    spec_file,
)
from .launch import World, launch_command, mpi_world, refuse_local_under_mpi, run, torch_world
from .plan import AUTO_DIM, resolve_gamma, tuning_target
from .train import check_network_backend, refuse_network

log = logging.getLogger(__name__)

#: memory of a run per byte of ``X0``: X0, every node's x, x̂, s, x̄⁰, messages and the
#: stacked result (measured: 101 bytes per float64 entry of X0 with identity, n = 8)
COPIES_OF_X0 = 16
#: memory per error value (node, round): each node's array, the stack, the mean, the file
BYTES_PER_ERROR = 32
#: the γ tuner's simulation (``tune_gamma``, dim 500, float32): bytes per node × dim
#: (measured: 44 bytes per entry with identity)
TUNER_BYTES = 48
#: seeds are 64-bit (numpy's and torch's generators)
SEED_RANGE = 2**64


def run_bytes(n: int, dim: int, steps: int, itemsize: int = 8, tuner: bool = False) -> int:
    """Estimated peak memory of a consensus run of ``n`` nodes, ``dim`` columns, ``steps``."""
    return (COPIES_OF_X0 * itemsize * n * dim + BYTES_PER_ERROR * n * (steps + 1)
            + (TUNER_BYTES * n * AUTO_DIM if tuner else 0))


def check_run_memory(n: int, dim: int, steps: int, itemsize: int, tuner: bool,
                     generated: bool) -> None:
    """Refuse, before X0 is generated or the run starts, a run that cannot fit in memory."""
    need = run_bytes(n, dim, steps, itemsize, tuner)
    limit, _ = memory_limit()
    if need <= limit:
        return
    detail = (f"{n} nodes × {dim:,} columns × {itemsize} bytes of X0, about "
              f"{COPIES_OF_X0} copies of it during the run, plus {steps + 1:,} error values "
              f"of {BYTES_PER_ERROR} bytes per node")
    most_dim = largest(lambda d: run_bytes(n, d, steps, itemsize, tuner) <= limit, high=dim)
    if most_dim and generated:
        fix = f"lower --dim to at most {most_dim:,}"
    elif most_dim:
        fix = f"pass an --init with at most {most_dim:,} columns"
    else:
        most_steps = largest(lambda t: run_bytes(n, 1, t, itemsize, tuner) <= limit,
                             high=steps)
        fix = f"lower --steps to at most {max(most_steps - 1, 0):,}"
    check_memory(need, "the consensus run", detail, fix)


@dataclass(frozen=True)
class Problem:
    """A validated consensus problem, identical on every rank."""

    topology: Topology | Schedule
    compressor: Compressor
    gamma: float
    gamma_source: str
    steps: int
    seed: int
    x0: np.ndarray


@dataclass
class NodeResult:
    x: np.ndarray
    error: np.ndarray  # ||x_i^t - x̄⁰||², t = 0..T
    bytes_sent: int
    #: simulated seconds at which this node finished round t, t = 0..T (None: no network)
    sim_time: np.ndarray | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(
        prog=prog_name("choco-consensus", "choco.consensus"), formatter_class=HelpFormatter,
        description="Run CHOCO-Gossip average consensus (arXiv:1902.00340) on a topology: "
        "node i starts from row i of X0 and the nodes gossip compressed differences until "
        "they agree on the mean. Writes x, error and bytes_sent to an .npz file.",
        epilog="compressor specs: " + ", ".join(available()))
    add_version_argument(p)
    add_gossip_arguments(p)
    p.add_argument("--gamma", default="auto",
                   help="consensus step size in (0, 1], or auto: 1 for identity, else the "
                   "consensus tuner (choco.tuning) on this topology and compressor")
    p.add_argument("--steps", type=int, default=500, help="number of gossip rounds T")
    p.add_argument("--init", default=None,
                   help="(n, d) .npy array, row i = node i's vector (default: generated, "
                   "standard normal with --dim columns and --seed)")
    p.add_argument("--dim", type=int, default=1000, help="columns of the generated X0")
    p.add_argument("--out", default="consensus.npz", help="output .npz (x, error, bytes_sent)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (default: refuse an existing file)")
    add_backend_argument(p)
    p.add_argument("--seed", type=int, default=0,
                   help="base seed of the compressors (and of the generated X0)")
    p.add_argument("--network", default="", metavar="SPEC",
                   help="simulate this network in process (--backend local), e.g. "
                   "bandwidth=1g,latency=50us (keys: bandwidth, latency, compute, encode, "
                   "decode, slow, jitter, seed, file; docs/simulation.md); adds sim_time_s to "
                   "the .npz and the JSON line")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--threads", action="store_true",
                   help="--backend local: one thread per node even where one thread can "
                   "drive every node round by round (fixed graph, codec without coding "
                   "state, a --network with a modelled compute time); same results, slower")
    return p.parse_args(argv)


def _initial(args: argparse.Namespace, n: int, tuner: bool) -> np.ndarray:
    if args.init is None:
        check_run_memory(n, args.dim, args.steps, 8, tuner, generated=True)
        return np.random.default_rng(args.seed).standard_normal((n, args.dim))
    x0 = load_npy(Path(args.init), "--init", ndim=2, dtypes=(np.float32, np.float64),
                  holding="an (n, d) float array",
                  example="numpy.save('X0.npy', numpy.random.randn(n, d))")
    if x0.shape[0] != n:
        raise UsageError(
            f"--init must hold an (n, d) array with one row per node (n = {n} for "
            f"{args.topology}), got shape {x0.shape}; save numpy.random.randn({n}, d)."
        )
    check_run_memory(n, x0.shape[1], args.steps, x0.itemsize, tuner, generated=False)
    return x0


def check_arguments(args: argparse.Namespace) -> None:
    """The checks that need no work: numbers in range, and the output file (before any run)."""
    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}; e.g. --steps 500.")
    if args.init is None and args.dim < 1:
        raise UsageError(f"--dim must be >= 1, got {args.dim}; e.g. --dim 1000 (or pass "
                         "--init X0.npy).")
    if not 0 <= args.seed < SEED_RANGE:
        raise UsageError(f"--seed must be in [0, 2^64), got {args.seed}; e.g. --seed 0.")
    check_output_file(args.out, "--out", inputs=[args.init, spec_file(args.topology)],
                      overwrite=args.overwrite)


def load_problem(args: argparse.Namespace, report: bool, ranks: int | None = None,
                 share: tuple | None = None) -> Problem:
    """Validate every input before anything runs or is written.

    ``ranks``: the MPI world size, which must equal the topology's n. ``share``: ``(rank,
    size, allgather)`` to split the γ tuner's grid over the ranks.
    """
    check_arguments(args)
    topology = parse_topology(args.topology, args.mixing)
    if ranks is not None and ranks != topology.n:
        n = topology.n
        raise UsageError(
            f"the topology {args.topology} has n = {n} nodes, so {launch_command(n)} is "
            f"required; got {ranks} ranks; relaunch with {launch_command(n)} or change "
            "--topology."
        )
    compressor = make_compressor(args.compressor)
    auto = str(args.gamma).strip().lower() == "auto"
    if not auto:
        check_gamma(args.gamma, "--gamma")  # a bad value is refused before X0 is built
    x0 = _initial(args, topology.n, tuner=auto and compressor.spec != "identity")
    gamma, source = resolve_gamma(args.gamma, compressor, tuning_target(topology), args.seed, share,
                                  topology.spec if report else None)
    if report:
        print(f"gamma {gamma:.4g} ({source})", flush=True)
    return Problem(topology, compressor, gamma, source, args.steps, args.seed, x0)


def progress_points(steps: int, count: int = 10) -> set[int]:
    """Rounds after which progress is reported (the same on every rank)."""
    return {round(steps * k / count) for k in range(1, count + 1)} - {0}


def progress_line(t: int, steps: int, error: float, error0: float,
                  sim_time: float | None = None) -> str:
    """One progress line: round, mean error over nodes, reduction since round 0, and the
    simulated time with ``--network``."""
    simulated = "" if sim_time is None else f"  simulated {sim_time:.4f}s"
    return (f"step {t:>6}/{steps}  error {error:.4e}  "
            f"(x{error0 / max(error, 1e-300):.3g} reduction){simulated}")


def summary_line(compressor: str, topology: str, gamma: float, steps: int, error0: float,
                 error_final: float, bytes_per_node: float, out: Path | str) -> str:
    """The closing line: error before and after, reduction, bytes per node, output file."""
    reduction = error0 / error_final if error_final > 0 else float("inf")
    return (f"{compressor} on {topology} (gamma {gamma:.4g}, {steps} steps): error "
            f"{error0:.4e} -> {error_final:.4e} (x{reduction:.3g} reduction), "
            f"{bytes_per_node:.0f} bytes sent per node; wrote {out}")


def run_node(comm: Communicator, problem: Problem, report: bool) -> NodeResult:
    """The per-node program, identical for the local and the MPI backend."""
    topo = problem.topology
    i = comm.rank
    x = torch.from_numpy(problem.x0[i].copy())
    xbar0 = torch.from_numpy(problem.x0.mean(axis=0))
    gossip = make_choco_gossip(comm, topo, problem.compressor, problem.gamma, problem.seed)
    error = np.empty(problem.steps + 1)
    error[0] = float(((x - xbar0) ** 2).sum())
    clocked = sim.now() is not None
    times = np.zeros(problem.steps + 1) if clocked else None
    points = progress_points(problem.steps)
    for t in range(1, problem.steps + 1):
        sim.local_step()  # the simulated compute of a round (0 unless --network compute=)
        gossip.step(x)
        error[t] = float(((x - xbar0) ** 2).sum())
        if times is not None:
            times[t] = sim.now()
        if t in points:
            total = comm.allreduce(np.array([error[t], error[0]]))
            latest = None if times is None else float(comm.allgather(times[t:t + 1]).max())
            if report and comm.rank == 0:
                print(progress_line(t, problem.steps, total[0] / comm.size,
                                    total[1] / comm.size, latest), flush=True)
    return NodeResult(x.numpy(), error, gossip.bytes_sent, times)


def lockstep_applies(problem: Problem, network: object) -> bool:
    """Whether one thread may drive every node of the in-process run (:func:`run_batched`
    or :func:`run_lockstep`): a fixed graph, a codec without coding state (no collective
    inside ``begin``, no per-node weights drawn from the node's generators) and, with a
    simulated clock, a modelled compute time (``compute=measured`` charges each node's own
    thread's host time)."""
    return (isinstance(problem.topology, Topology) and not is_stateful(problem.compressor)
            and not getattr(network, "measured", False))


def _clock_times(clock: NetworkClock | None, steps: int) -> np.ndarray | None:
    return None if clock is None else np.zeros((clock.size, steps + 1))


def _report(report: bool, t: int, problem: Problem, error: np.ndarray,
            times: np.ndarray | None) -> None:
    if report:
        n = error.shape[0]
        print(progress_line(t, problem.steps, error[:, t].sum() / n, error[:, 0].sum() / n,
                            None if times is None else float(times[:, t].max())), flush=True)


def run_lockstep(comms: list, problem: Problem, report: bool,
                 clock: NetworkClock | None = None) -> list[NodeResult]:
    """Every node of the in-process network in this one thread, round by round (``begin``
    on every node, then ``finish`` on every node, :func:`choco.gossip.lockstep`).

    Each node does what :func:`run_node` does, with the same arithmetic in the same order
    on its own tensors (the codecs' randomness is keyed by the message seed, never by a
    process-wide generator), so every node's ``x``, errors and bytes are bit-identical to
    the threaded run, without a thread hand-over per node and round. With ``clock``, each
    round's events advance it as the nodes' threads would (:func:`choco.sim.clock.
    LockstepClock`): the same simulated times.
    """
    n = len(comms)
    xs = [torch.from_numpy(problem.x0[i].copy()) for i in range(n)]
    xbar0 = torch.from_numpy(problem.x0.mean(axis=0))
    gossips = [make_choco_gossip(c, problem.topology, problem.compressor, problem.gamma,
                                 problem.seed) for c in comms]
    degree = [len(c.neighbors) for c in comms]
    error = np.empty((n, problem.steps + 1))
    times = _clock_times(clock, problem.steps)
    ticks = None if clock is None else LockstepClock(clock)
    for i, x in enumerate(xs):
        error[i, 0] = float(((x - xbar0) ** 2).sum())
    points = progress_points(problem.steps)
    for t in range(1, problem.steps + 1):
        sent = [g.bytes_sent for g in gossips]
        lockstep(gossips, xs, 1)
        for i, x in enumerate(xs):
            error[i, t] = float(((x - xbar0) ** 2).sum())
        if ticks is not None and times is not None:
            ticks.round([(g.bytes_sent - b) // d if d else 0  # this round's message lengths
                         for g, b, d in zip(gossips, sent, degree, strict=True)],
                        each=True)  # ChocoGossip.finish decodes each as it arrives
            times[:, t] = ticks.now()
        if t in points:
            _report(report, t, problem, error, times)
    return [NodeResult(x.numpy(), error[i], g.bytes_sent, None if times is None else times[i])
            for i, (x, g) in enumerate(zip(xs, gossips, strict=True))]


def run_batched(problem: Problem, codec: BatchCodec, report: bool,
                clock: NetworkClock | None = None) -> list[NodeResult]:
    """Every node at once (:class:`choco.batched.BatchedChocoGossip`): ``x``, errors, bytes
    and, with ``clock``, simulated times bit-identical to :func:`run_node` in threads.

    The error of node ``i`` is the per-node expression on row ``i``: the elementwise part
    on a block of rows, the sum with the same torch call per row.
    """
    topo = problem.topology
    if not isinstance(topo, Topology):
        raise UsageError(f"the batched driver needs a fixed graph, got the schedule {topo.spec}; "
                         "run it with --threads.")
    n = topo.n
    x = torch.from_numpy(problem.x0.copy())
    xbar0 = torch.from_numpy(problem.x0.mean(axis=0))
    gossip = BatchedChocoGossip(topo.W, [topo.neighbors(i) for i in range(n)], codec,
                                problem.gamma, x, problem.seed)
    nbytes = [codec.message_nbytes] * n
    error = np.empty((n, problem.steps + 1))
    times = _clock_times(clock, problem.steps)
    ticks = None if clock is None else LockstepClock(clock)
    points = progress_points(problem.steps)
    size = max(b.stop - b.start for b in gossip.blocks)
    squares = torch.empty((size, x.shape[1]), dtype=x.dtype)
    rows = list(squares)
    for t in range(problem.steps + 1):
        if t > 0:
            gossip.step()
            if ticks is not None and times is not None:
                ticks.round(nbytes, each=True)  # decoded as they arrive, as ChocoGossip
                times[:, t] = ticks.now()
        for b in gossip.blocks:  # (x_i − x̄⁰)², a block of rows at a time
            torch.sub(x[b], xbar0, out=squares[: b.stop - b.start]).pow_(2)
            error[b, t] = [float(row.sum()) for row in rows[: b.stop - b.start]]
        if t in points:
            _report(report, t, problem, error, times)
    sent = gossip.bytes_sent
    return [NodeResult(x[i].numpy(), error[i], int(sent[i]),
                       None if times is None else times[i]) for i in range(n)]


def summarize(problem: Problem, results: list[NodeResult], out: Path, as_json: bool,
              network: str | None = None) -> None:
    x = np.stack([r.x for r in results])
    error = np.sum(np.stack([r.error for r in results]), axis=0) / len(results)
    bytes_sent = np.array([r.bytes_sent for r in results], dtype=np.int64)
    arrays = {"x": x, "error": error, "bytes_sent": bytes_sent}
    sim_time = None
    if results[0].sim_time is not None:  # when the last node finished round t
        arrays["sim_time_s"] = sim_time = np.max(
            np.stack([r.sim_time for r in results if r.sim_time is not None]), 0)
    atomic_savez(out, **arrays)
    reduction = error[0] / error[-1] if error[-1] > 0 else float("inf")
    print(summary_line(problem.compressor.spec, problem.topology.spec, problem.gamma,
                       problem.steps, error[0], error[-1], bytes_sent.mean(), out), flush=True)
    if sim_time is not None:
        print(f"simulated time {sim_time[-1]:.4f}s on {network}", flush=True)
    if as_json:
        print(json.dumps({
            "topology": problem.topology.spec,
            "compressor": problem.compressor.spec, "gamma": problem.gamma,
            "gamma_source": problem.gamma_source,
            "steps": problem.steps, "error_initial": float(error[0]),
            "error_final": float(error[-1]), "reduction": float(reduction),
            "bytes_per_node": float(bytes_sent.mean()), "out": str(out),
            **({} if sim_time is None else {"sim_time_s": float(sim_time[-1]),
                                            "network": network}),
        }))


def main_local(args: argparse.Namespace) -> int:
    refuse_local_under_mpi()
    from ..comm.local import LocalNetwork
    from ..sim.spec import parse_network

    network = parse_network(args.network) if args.network else None  # before the tuner
    problem = load_problem(args, report=not args.quiet)
    topo = problem.topology
    neighbors = [topo.neighbors(i) for i in range(topo.n)]
    if network is not None and network.measured and not args.quiet:
        print("network compute=measured: simulated times include this host's round times, "
              "so they differ from run to run", flush=True)
    torch.set_num_threads(1)  # one thread per node already
    one_thread = lockstep_applies(problem, network) and not args.threads
    x0 = problem.x0
    codec = (batch_codec(problem.compressor, x0.shape[1], torch.from_numpy(x0[:0]).dtype)
             if one_thread else None)
    if codec is not None:  # no per-node objects at all: the clock alone
        clock = None if network is None else NetworkClock(network, neighbors)
        results = run_batched(problem, codec, not args.quiet, clock)
    elif one_thread:
        net = LocalNetwork(neighbors, network=network)
        results = run_lockstep(net.comms, problem, not args.quiet, net.clock)
    else:
        net = LocalNetwork(neighbors, network=network)
        results = net.run(lambda comm: run_node(comm, problem, report=not args.quiet))
    summarize(problem, results, Path(args.out), args.json,
              None if network is None else network.text)
    return 0


def main_world(args: argparse.Namespace, world: World) -> int:
    """One node per rank of an MPI or torchrun launch; rank 0 writes the output."""
    from ..comm import check_agreement

    rank, size = world.rank, world.size
    if args.network:  # (main refuses it first; this keeps main_world safe when called alone)
        raise UsageError(refuse_network("--backend " + world.backend))
    # one collective first: ranks started with other options stop here, on every rank
    check_agreement(world.comm, config=vars(args), what="consensus")
    problem = load_problem(args, report=not args.quiet and rank == 0, ranks=size,
                           share=(rank, size, world.comm.allgather_object))
    check_agreement(world.comm, tensors=[torch.from_numpy(problem.x0)], what="consensus")
    n = problem.topology.n
    comm = world.node(problem.topology.neighbors(rank))
    result = run_node(comm, problem, report=not args.quiet)
    xs = comm.allgather(result.x)
    errors = comm.allgather(result.error)
    sent = comm.allgather(np.array([result.bytes_sent], dtype=np.int64))[:, 0]
    if rank == 0:
        results = [NodeResult(xs[i], errors[i], int(sent[i])) for i in range(n)]
        summarize(problem, results, Path(args.out), args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m choco.consensus`` / ``choco-consensus``."""
    setup_output()
    args = parse_args(argv)
    try:
        check_network_backend(args.network, args.backend)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def start(backend: str) -> int:
        if backend == "mpi":
            return main_world(args, mpi_world())
        if backend == "torch":
            return main_world(args, torch_world("cpu"))
        return main_local(args)

    return run(args.backend, start)


if __name__ == "__main__":
    sys.exit(main())

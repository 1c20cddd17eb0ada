"""``choco-train`` / ``python -m choco.train``: decentralized training, one node per rank.

With no options it trains an MLP on the embedded digits set with sign-compressed CHOCO-SGD
on a ring of 8 nodes, all in one process; ``mpiexec -n 8 choco-train`` runs the same with one
rank per node. See ``choco-train --help`` and docs/usage.md for every option.

Outputs in ``--out``: ``config.json`` (resolved configuration, version, n, spectral gap,
γ used, per-node learning rates), ``metrics.jsonl`` (one row per epoch), ``model.pt`` (the
network-average model), and ``checkpoint/`` when ``--checkpoint-every`` is set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .. import __version__, sim
from ..comm.base import Communicator
from ..errors import UsageError
from ..models import param_groups
from . import checkpoint
from .algorithms import AveragerArgs
from .cli import setup_output
from .config import TrainConfig, parse_config
from .files import atomic_torch_save, atomic_write_json
from .launch import (
    DIVERGED_EXIT,
    USAGE_EXIT,
    World,
    choose_device,
    interrupted,
    mpi_world,
    refuse_local_under_mpi,
    resolve_backend,
    run,
    torch_world,
)
from .metrics import (
    JsonlWriter,
    average_model,
    consensus_distance,
    mean_scalars,
    network_mean,
)
from .plan import Plan, make_plan
from .schedule_view import rate_keys

log = logging.getLogger("choco.train")
T = TypeVar("T")


def _evaluate(plan: Plan, comm: Communicator, model: torch.nn.Module) -> dict[str, float]:
    """Test metrics of the network average x̄ (test set split over nodes) and of x_i."""
    averaged = average_model(comm, model)
    return plan.task.evaluate(comm, model, averaged, plan.cfg.eval_local)


def build_optimizer(plan: Plan, comm: Communicator, model: torch.nn.Module):
    """The node's optimizer: local (Nesterov) SGD wrapped with the algorithm's communication."""
    cfg = plan.cfg
    sgd = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=plan.lr_peaks[comm.rank],
                          momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    topo = plan.topology
    row = None if topo.time_varying else topo.W[comm.rank]
    args = AveragerArgs(comm, row, plan.compressor, plan.gamma, cfg.seed, schedule=topo)
    return plan.algorithm.wrap(sgd, args, order=cfg.order, gossip_every=cfg.gossip_every,
                               outer=cfg.outer, momentum_mode=cfg.momentum_mode)


#: what a run folder holds
RUN_FILES = ("config.json", "metrics.jsonl", "model.pt", checkpoint.FOLDER)


def run_held(out: Path) -> list[str]:
    """The files of ``out`` that make it hold a run (empty: nothing, or an unfinished
    start: a ``config.json`` and an empty ``metrics.jsonl``, no model, no checkpoint)."""
    held = []
    metrics = out / "metrics.jsonl"
    if metrics.exists() and (not metrics.is_file() or metrics.stat().st_size > 0):
        held.append("metrics.jsonl")
    if (out / "model.pt").exists():
        held.append("model.pt")
    folder = out / checkpoint.FOLDER
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        held.append(checkpoint.FOLDER)
    if held and (out / "config.json").exists():
        held.insert(0, "config.json")
    return held


def check_start(cfg: TrainConfig) -> None:
    """Every refusal that depends only on the options and the file system, made before
    the γ tuner, data loading or any write (each a :class:`UsageError`).

    ``--out`` is a file; ``--resume`` with ``--overwrite``; ``--resume`` without a complete
    checkpoint; a folder that holds a run without ``--resume``/``--overwrite``; a new
    ``--out`` that cannot be created; ``--device cuda`` where torch sees no GPU; a data set
    whose files are not in ``--data-dir``.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, but {out} is a file; choose another --out.")
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it; "
                         "pass only one of them.")
    if cfg.resume:
        if checkpoint.find_latest(out) is None:
            raise UsageError(f"--resume needs a complete checkpoint in {out / checkpoint.FOLDER}"
                             ", but there is none; run with --checkpoint-every E first (same "
                             "--out), or drop --resume.")
    elif (held := run_held(out)) and not cfg.overwrite:
        raise UsageError(f"--out {out} already holds a run ({', '.join(held)}); pass --resume "
                         "to continue it, --overwrite to replace it, or choose another --out.")
    if not out.exists():
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"--out {out} cannot be created: {parent} is not a folder you can "
                             "write to; choose another --out.")
    choose_device(cfg.device)
    check_data(cfg.dataset, cfg.data_dir)


def check_data(name: str, data_dir: str | None) -> None:
    """The files of a data set read from ``--data-dir`` are there (paths only, nothing read)."""
    from ..data import REGISTRY
    from ..data.images import cifar10_folder
    from ..data.text import wikitext2_folder

    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in REGISTRY or not REGISTRY[key][1]:
        return  # an unknown name is refused by make_dataset, with the valid names
    if not data_dir:
        raise UsageError(f"data set {key} is read from local files: pass --data-dir DIR "
                         f"(the folder holding {key}'s files).")
    folders = {"cifar10": cifar10_folder, "wikitext2": wikitext2_folder}
    if key in folders:
        folders[key](data_dir)  # names the files it needs and where to put them
    elif not Path(data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir must be a folder holding the {key} files, got "
                         f"{data_dir!r}, which is not a folder; pass the folder you "
                         "extracted the data set into.")


def run_identity(plan: Plan) -> dict[str, object]:
    """What a checkpoint must share with the run that resumes it."""
    cfg = plan.cfg
    return {"topology": plan.topology.spec, "mixing": cfg.mixing, "n": plan.topology.n,
            "algorithm": cfg.algorithm,
            "compressor": cfg.compressor if plan.algorithm.needs_compressor else None,
            "per_tensor": cfg.per_tensor, "model": cfg.model, "model_args": cfg.model_args,
            "dataset": cfg.dataset, "partition": cfg.partition, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "version": __version__,
            # the newer options, only when set: older checkpoints keep resuming
            **({"outer": cfg.outer} if cfg.outer else {}),
            **({"momentum_mode": cfg.momentum_mode} if cfg.momentum_mode != "local" else {})}


def check_out(plan: Plan) -> checkpoint.Generation | None:
    """Check ``--out`` again once the plan is known; the generation ``--resume`` will use.

    :func:`check_start` refused what needs no plan; this checks the checkpoint against the
    run (topology, model, ...). Reads only; :func:`prepare_out` then writes.
    """
    cfg = plan.cfg
    out = Path(cfg.out)
    if cfg.resume:
        return checkpoint.check_resumable(out, run_identity(plan), plan.topology.n)
    held = run_held(out)
    if held and not cfg.overwrite:
        raise UsageError(f"--out {out} already holds a run ({', '.join(held)}); "
                         "pass --resume to continue it, --overwrite to replace it, or choose "
                         "another --out.")
    return None


class StartGuard:
    """Undo what an unfinished start wrote: if the run ends by an exception (Ctrl-C, a
    failure) before its first epoch is recorded, the files it created (``config.json``, the
    empty ``metrics.jsonl``, an empty checkpoint folder) are removed, and so is the folder
    itself if the start created it, so ``--out`` is left as it was found."""

    def __init__(self, out: Path) -> None:
        self.out = out
        #: the folders the start will create (``--out`` and missing parents), deepest first
        self.created = [p for p in (out, *out.parents) if not p.exists()]
        self.had = {name for name in RUN_FILES if (out / name).exists()}

    def undo(self) -> None:
        if run_held(self.out):
            return  # the run really started: its files stay (for --resume)
        try:
            for name in RUN_FILES:
                path = self.out / name
                if name in self.had or not path.exists():
                    continue
                if path.is_dir():
                    path.rmdir()  # empty, or run_held would have named it
                else:
                    path.unlink()
            # a write interrupted between creating its temporary file and renaming it
            # (files.atomic_write) leaves NAME.*.tmp beside NAME
            for name in RUN_FILES:
                for tmp in self.out.glob(f"{name}.*.tmp"):
                    tmp.unlink(missing_ok=True)
            for folder in self.created:
                # Ctrl-C can land inside mkdir(parents=True), after a parent was made and
                # before the deeper folder: skip what does not exist and go on upwards
                if folder.exists():
                    folder.rmdir()  # fails (and stops) at one that is not empty
        except OSError:
            pass


def prepare_out(plan: Plan) -> None:
    """Create ``--out`` (and, with ``--overwrite``, delete the earlier run's files)."""
    out = Path(plan.cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if plan.cfg.overwrite:
            for name in RUN_FILES:
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be written ({exc.strerror or exc}); choose a "
                         "folder you can write to.") from None


def train_node(comm: Communicator, plan: Plan,
               resume: checkpoint.Generation | None = None,
               device: torch.device | None = None) -> dict:
    """The per-node training program, identical for the local and the MPI backend.

    ``resume``: the checkpoint generation to continue from (checked by :func:`check_out`).
    """
    cfg = plan.cfg
    rank = comm.rank
    device = device if device is not None else node_device(cfg.device)
    model = plan.new_model().to(device)
    _broadcast_model(comm, model)
    opt = build_optimizer(plan, comm, model)
    # Dropout draws from torch's global generator: one stream per rank, checkpointed (the
    # local backend switches each node's own generator in and out, as separate processes).
    torch.manual_seed(cfg.seed * 1_000_003 + rank)
    start_epoch, elapsed0 = 0, 0.0
    every = cfg.checkpoint_every
    if resume is not None:
        state = checkpoint.load_rank_state(comm, resume)
        every = every or resume.checkpoint_every  # keep the period the run was started with
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        node_clock = sim.clock.current()
        if node_clock is not None and "sim" in state:
            node_clock[0].load_state(node_clock[1], state["sim"])
        start_epoch, elapsed0 = state["epoch"], state["elapsed"]
    out = Path(cfg.out)
    writer = JsonlWriter(out / "metrics.jsonl", start_epoch if resume else None) \
        if rank == 0 else None
    t0 = time.perf_counter() - elapsed0
    row: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        train_loss = _train_epoch(plan, comm, model, opt, epoch)
        diverged = not math.isfinite(train_loss)
        x_bar = network_mean(comm, opt.x.detach())
        sim_time = _sim_time(comm)  # before the metrics (they cost no simulated time)
        row = {"epoch": epoch + 1, "train_loss": train_loss,
               **({} if diverged else _evaluate(plan, comm, model)),
               "consensus_distance": consensus_distance(comm, opt.x.detach(), x_bar),
               "bytes_sent": mean_scalars(comm, [float(opt.bytes_sent)])[0],
               "wall_time_s": round(time.perf_counter() - t0, 3),
               "lr": plan.schedule.at(0, epoch, plan.steps_per_epoch - 1)}
        if sim_time is not None:
            row["sim_time_s"] = sim_time
        row.update(_coding_counters(comm, getattr(opt, "gossip", None)))
        row = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
               for k, v in row.items()}
        if diverged:
            row["diverged"] = True
        if writer is not None:
            writer.write(row)
            if not cfg.quiet:
                print(progress_line(row, cfg.epochs, plan.task.quality), flush=True)
        if diverged:  # every node stops at the same step; the caller reports it
            return row
        if every and (epoch + 1) % every == 0:
            state = {"epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                     "elapsed": time.perf_counter() - t0, "n": comm.size,
                     "rng": torch.get_rng_state()}
            node_clock = sim.clock.current()
            if node_clock is not None:
                state["sim"] = node_clock[0].state(node_clock[1])
            checkpoint.save_generation(comm, out, epoch + 1, state, run_identity(plan), every)
    opt.flush()  # no exchange may stay in flight at exit
    averaged = average_model(comm, model)
    if rank == 0:
        atomic_torch_save(averaged.state_dict(), out / "model.pt")
    return row


def _coding_counters(comm: Communicator, gossip: object) -> dict[str, int]:
    """A stateful codec's per-node counters (lgc: messages by kind), totals over the nodes,
    as ``{family}_{name}`` (``lgc_learned``, ``lgc_fallbacks``); empty when stateless."""
    coding, compressor = getattr(gossip, "coding", None), getattr(gossip, "compressor", None)
    if coding is None or compressor is None:
        return {}
    counts = coding.counters()
    sums = comm.allreduce(np.array(list(counts.values()), np.float64))
    family = compressor.spec.split(":")[0]
    return {f"{family}_{name}": int(v) for name, v in zip(counts, sums, strict=True)}


def _train_epoch(plan: Plan, comm: Communicator, model, opt, epoch: int) -> float:
    """One epoch of local steps + gossip; the mean train loss over nodes (NaN: diverged).

    No collective runs at every step. A node whose loss stops being finite stops taking
    local steps but keeps gossiping, so no neighbour is left waiting in an exchange; every
    ``--divergence-check`` steps and at the end of the epoch one small all-reduce (the loss
    sums and a flag) lets every node stop at the same step.
    """
    cfg = plan.cfg
    task = plan.task
    model.train()
    carry = task.begin_epoch(model)
    loss_sum, bad = 0.0, False
    steps = plan.steps_per_epoch
    total = np.zeros(2)
    device = opt.x.device
    for b, batch in enumerate(task.batches(comm.rank, epoch)):
        if device.type != "cpu":
            batch = (batch[0].to(device, non_blocking=True),
                     batch[1].to(device, non_blocking=True))
        lr = plan.schedule.at(comm.rank, epoch, b)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        if not bad:
            loss, carry = task.loss(model, batch, carry)
            value = loss.item()
            bad = not math.isfinite(value)
        if bad:
            opt.skip_step()  # no local step; the gossip round still runs
        else:
            loss_sum += value
            loss.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
        if (b + 1) % cfg.divergence_check == 0 or b + 1 == steps:
            total = comm.allreduce(np.array([loss_sum, 1.0 if bad else 0.0]))
            if total[1] > 0:
                opt.flush()
                return float("nan")
    return float(total[0]) / comm.size / max(steps, 1)


def _sim_time(comm: Communicator) -> float | None:
    """Simulated seconds until the last node finished its part so far (``None``: no
    simulated network); a collective."""
    mine = sim.now()
    if mine is None:
        return None
    return round(float(comm.allgather(np.array([mine])).max()), 6)


@torch.no_grad()
def _broadcast_model(comm: Communicator, model: torch.nn.Module) -> None:
    """All x_i start equal (arXiv:1907.09356, Alg. 1): rank 0's parameters and buffers."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    mine = torch.cat([t.reshape(-1).double().cpu() for t in tensors]).numpy()
    flat = torch.from_numpy(comm.broadcast(mine))
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def progress_line(row: dict, epochs: int, quality: Callable[[dict], str]) -> str:
    """One line per epoch: loss, test quality of x̄ and of the nodes, consensus, bytes, lr.

    ``quality`` formats the test metrics (:meth:`choco.run.tasks.Task.quality`).
    """
    head = f"epoch {row['epoch']:>4}/{epochs}"
    simulated = (f"  simulated {row['sim_time_s']:.3f}s" if row.get("sim_time_s") is not None
                 else "")
    if row.get("diverged"):
        return (f"{head}  DIVERGED (non-finite loss)  sent {row['bytes_sent'] / 2**20:.3f} "
                f"MiB/node  {row['wall_time_s']:.1f}s{simulated}")
    return (f"{head}  loss {row['train_loss']:.4f}  {quality(row)}  "
            f"consensus {row['consensus_distance']:.3e}  "
            f"sent {row['bytes_sent'] / 2**20:.3f} MiB/node  lr {row['lr']:.4g}  "
            f"{row['wall_time_s']:.1f}s{simulated}")


def _write_config(plan: Plan, backend: str, vendor: str,
                  network: dict | None = None) -> None:
    cfg = plan.cfg
    out = Path(cfg.out)
    info = {
        "config": cfg.to_dict(), "version": __version__, "backend": backend,
        "n": plan.topology.n, "topology": plan.topology.spec,
        "spectral_gap": plan.topology.spectral_gap, **rate_keys(plan.topology),
        "gamma": plan.gamma,
        "gamma_source": plan.gamma_source, "lr_peak_per_node": plan.lr_peaks,
        "steps_per_epoch": plan.steps_per_epoch, "parameters": plan.num_params,
        "parameter_tensors": plan.num_tensors, "message_bytes": plan.message_bytes,
        "torch": torch.__version__, "python": platform.python_version(), "mpi": vendor,
    }
    if network is not None:
        info["network"] = network
    atomic_write_json(out / "config.json", info)


def _announce(plan: Plan) -> None:
    """Say which γ the run uses and where it came from (rank 0, unless --quiet)."""
    if plan.cfg.quiet or plan.gamma is None:
        return
    print(f"gamma {plan.gamma:.4g} ({plan.gamma_source})", flush=True)


def _finish(plan: Plan, row: dict) -> int:
    """Print the closing lines; the exit status (:data:`DIVERGED_EXIT` if it diverged)."""
    cfg = plan.cfg
    compressor = cfg.compressor if plan.algorithm.needs_compressor else None
    if not cfg.quiet:
        what = f"DIVERGED in epoch {row['epoch']} (exit {DIVERGED_EXIT})" \
            if row.get("diverged") else "done"
        print(f"{what}: {cfg.algorithm} ({compressor or 'uncompressed'}) on "
              f"{plan.topology.spec}; results in {cfg.out}/metrics.jsonl", flush=True)
    if cfg.json:
        print(json.dumps({**row, "out": cfg.out, "algorithm": cfg.algorithm,
                          "compressor": compressor, "topology": plan.topology.spec,
                          "gamma": plan.gamma}))
    return DIVERGED_EXIT if row.get("diverged") else 0


def train_local(cfg: TrainConfig) -> int:
    """Every node in this process, one thread each (:class:`~choco.comm.LocalNetwork`)."""
    refuse_local_under_mpi()
    from ..comm.local import LocalNetwork

    check_start(cfg)
    plan = make_plan(cfg, cfg.nodes or None)
    resume = check_out(plan)
    # a bad --network (a node outside the graph, a link that is no edge) fails before writing
    net = LocalNetwork([plan.topology.neighbors(i) for i in range(plan.topology.n)],
                       network=cfg.network or None)
    if net.clock is not None and net.clock.measured and not cfg.quiet:
        print("network compute=measured: simulated times include this host's step times, "
              "so they differ from run to run", flush=True)
    _announce(plan)
    guard = StartGuard(Path(cfg.out))
    threads = torch.get_num_threads()
    try:
        prepare_out(plan)
        _write_config(plan, "local", "none", None if net.clock is None
                      else net.clock.spec.to_dict())
        torch.set_num_threads(1)  # one Python thread per node already
        rows = net.run(lambda comm: train_node(comm, plan, resume))
    except BaseException:
        guard.undo()
        raise
    finally:
        torch.set_num_threads(threads)
    return _finish(plan, rows[0])


def _on_every_rank(comm: Communicator, fn: Callable[[], T]) -> T:
    """``fn()`` on every rank; if it raises a user error anywhere, raise it everywhere."""
    error: str | None = None
    result: list[T] = []  # fn()'s value, if it returned
    try:
        result.append(fn())
    except UsageError as exc:
        error = str(exc)
    errors = [e for e in comm.allgather_object(error) if e]
    if errors:
        raise UsageError(errors[0])
    return result[0]


def train_world(cfg: TrainConfig, world: World) -> int:
    """One node per rank of an MPI or torchrun launch."""
    from ..comm import check_agreement

    size, rank = world.size, world.rank
    if cfg.network:
        raise UsageError(refuse_network("--backend " + world.backend))
    if cfg.nodes and cfg.nodes != size:
        raise UsageError(f"--nodes {cfg.nodes} but the launcher started {size} ranks; drop "
                         f"--nodes or start {cfg.nodes} ranks.")
    # one collective before anything else: ranks started with other options stop here, on
    # every rank, before any of them enters a collective the others never reach
    check_agreement(world.comm, config=cfg.to_dict(), what="run")
    _on_every_rank(world.comm, lambda: check_start(cfg))
    plan = make_plan(cfg, size, share=(rank, size, world.comm.allgather_object))
    if not cfg.resume:  # the initial model (on resume, the checkpoint's per-rank states)
        check_agreement(world.comm, tensors=plan.template.state_dict(), what="run")
    # every rank reads the same manifests; all finish reading before rank 0 writes, and an
    # error on any rank is raised on every rank
    resume = _on_every_rank(world.comm, lambda: check_out(plan))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    guard = StartGuard(Path(cfg.out)) if rank == 0 else None
    if rank == 0:
        _announce(plan)
    try:
        if rank == 0:
            prepare_out(plan)
            _write_config(plan, world.backend, world.vendor)
        world.comm.barrier()
        device = node_device(cfg.device, world.local_rank)
        row = train_node(world.node(plan.topology.neighbors(rank)), plan, resume, device)
    except BaseException:
        if guard is not None:
            guard.undo()
        raise
    if rank == 0:
        return _finish(plan, row)
    return DIVERGED_EXIT if row.get("diverged") else 0


def check_network_backend(network: str | None, backend: str) -> None:
    """Refuse ``--network`` with a backend of one process per node (before any launch)."""
    if not network:
        return
    try:
        resolved = resolve_backend(backend)
    except UsageError:
        return  # the bad --backend is reported by the launch itself
    if resolved != "local":
        where = f"--backend {backend}" + (f" (resolved to {resolved})" if backend != resolved
                                          else "")
        raise UsageError(refuse_network(where))


def refuse_network(where: str) -> str:
    """The error for ``--network`` outside the in-process backend."""
    return (f"--network simulates a network for an in-process run, but this run uses {where} "
            "with one process per node, where real time is measured (wall_time_s); drop "
            "--network, or run all nodes in one process with --backend local.")


def node_device(name: str, local_rank: int = 0) -> torch.device:
    """``--device``: cpu, cuda (``cuda:LOCAL_RANK``) or auto (cuda when available)."""
    return choose_device(name, local_rank)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``choco-train``."""
    setup_output()
    try:
        cfg = parse_config(argv)
        check_network_backend(cfg.network, cfg.backend)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        return interrupted()

    def start(backend: str) -> int:
        resolved = replace(cfg, backend=backend)
        if backend == "mpi":
            return train_world(resolved, mpi_world())
        if backend == "torch":
            return train_world(resolved, torch_world(resolved.device))
        return train_local(resolved)

    return run(cfg.backend, start)


if __name__ == "__main__":
    sys.exit(main())

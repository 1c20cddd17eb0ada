"""The validated run, identical on every node: topology, algorithm, task, compressor, γ, LR.

:func:`make_plan` checks the whole configuration before anything runs or is written and
computes, without communication, everything the nodes must agree on: the topology and its
mixing matrix, the data split and the steps per epoch (the minimum over nodes: every gossip
round is a collective exchange), the initial model (seeded; broadcast from rank 0 anyway),
the compressor and its message size, γ, and the per-node learning rates. Only the γ tuner
communicates (its grid is split over the MPI ranks).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from topologies import Schedule, Topology, parse_topology

from ..compress import per_tensor
from ..compress.base import Compressor
from ..data import make_dataset
from ..errors import UsageError
from ..gossip import check_gamma
from ..models import param_groups
from .algorithms import Algorithm, get_algorithm
from .config import TrainConfig, parse_model_args
from .launch import launch_command
from .schedule import LRSchedule, peak_lrs
from .tasks import Task, make_task

__all__ = ["Plan", "Share", "make_plan", "resolve_topology"]

#: topology names that take the number of nodes as their only size argument
SIZED = ("ring", "star", "complete", "exponential", "torus", "onepeer", "base", "matching")

#: ``(rank, size, allgather)``: how the γ tuner splits its grid over the MPI ranks
Share = tuple[int, int, Callable]


@dataclass(frozen=True)
class Plan:
    """The validated run, identical on every rank."""

    cfg: TrainConfig
    #: a static topology, or a time-varying schedule (``onepeer:8``, ``ring:8+pga:4``)
    topology: Topology | Schedule
    algorithm: Algorithm
    task: Task
    schedule: LRSchedule
    #: the message compressor (per tensor when ``--per-tensor``), ``None`` if nothing is
    #: compressed; stateless, shared by the nodes of one process
    compressor: Compressor | None
    gamma: float | None
    gamma_source: str
    #: the initial model; every node starts from a copy
    template: nn.Module
    num_params: int
    num_tensors: int
    message_bytes: int

    @property
    def steps_per_epoch(self) -> int:
        return self.task.steps_per_epoch

    @property
    def lr_peaks(self) -> list[float]:
        return list(self.schedule.peaks)

    def new_model(self) -> nn.Module:
        """A node's model: a copy of the initial model."""
        return copy.deepcopy(self.template)


def resolve_topology(spec: str, mixing: str, n: int | None,
                     mpi: bool = False) -> Topology | Schedule:
    """Parse ``spec``; a size-less name (``ring``, ``torus``, ``onepeer``, ...) takes ``n``
    nodes, also before a modifier (``onepeer+pga:4``).

    ``n`` is the number of nodes the run has (``--nodes``, or the MPI world size if ``mpi``).
    """
    spec = spec.strip()
    head, plus, tail = spec.partition("+")
    if ":" not in head and head.strip().lower() in SIZED:
        if n is None:
            raise UsageError(f"--topology {spec} needs a size: write {head}:8{plus}{tail}, or "
                             "pass --nodes N (local) / launch with mpiexec -n N.")
        spec = f"{head.strip()}:{n}{plus}{tail}"
    topo = parse_topology(spec, mixing)
    start = launch_command(topo.n)
    if mpi and n == 1 and topo.n != 1:
        raise UsageError(f"--topology {spec} has {topo.n} nodes but this run has a single "
                         f"rank (--backend mpi or torch without a launcher?); start it with "
                         f"{start}, or use --backend local (or auto).")
    if n is not None and topo.n != n:
        ranks = "the number of ranks" if mpi else "--nodes"
        fix = f"launch {start}" if mpi else f"pass --nodes {topo.n}"
        raise UsageError(f"--topology {spec} has {topo.n} nodes but the run has {n} (from "
                         f"{ranks}); make them agree: {fix}, or use a topology "
                         f"of {n} nodes (e.g. ring:{n}, or just 'ring').")
    return topo


def _check_numbers(cfg: TrainConfig) -> None:
    checks = [(cfg.epochs >= 1, "--epochs must be >= 1", cfg.epochs),
              (cfg.batch_size >= 1, "--batch-size must be >= 1", cfg.batch_size),
              (cfg.lr > 0, "--lr must be > 0", cfg.lr),
              (0 <= cfg.momentum < 1, "--momentum must be in [0, 1)", cfg.momentum),
              (cfg.weight_decay >= 0, "--weight-decay must be >= 0", cfg.weight_decay),
              (cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0", cfg.warmup_epochs),
              (cfg.gossip_every >= 1, "--gossip-every must be >= 1", cfg.gossip_every),
              (cfg.divergence_check >= 1, "--divergence-check must be >= 1",
               cfg.divergence_check),
              (cfg.checkpoint_every >= 0, "--checkpoint-every must be >= 0",
               cfg.checkpoint_every),
              (cfg.order in ("overlap", "sync"), "--order must be overlap or sync", cfg.order),
              (cfg.lr_scaling in ("none", "paper"), "--lr-scaling must be none or paper",
               cfg.lr_scaling)]
    for ok, requirement, value in checks:
        if not ok:
            raise UsageError(f"{requirement}, got {value!r}.")


#: the consensus simulation ``--gamma auto`` runs per candidate γ
AUTO_DIM, AUTO_STEPS = 500, 200


def tuning_target(topology: Topology | Schedule):
    """What the γ tuner simulates: ``W``, or the schedule itself when it varies."""
    return topology if topology.time_varying else topology.W


def resolve_gamma(text: str, compressor: Compressor, W, seed: int, share: Share | None,
                  announce: str | None = None) -> tuple[float, str]:
    """``--gamma``: a number in (0, 1] (``given``), or ``auto``: 1 for identity (nothing to
    damp), else :func:`choco.tuning.tune_gamma` on this ``W`` (or time-varying schedule,
    :func:`tuning_target`) and compressor. Returns
    ``(γ, where it came from)``; ``announce`` (the topology's name) prints what is tuned."""
    if str(text).strip().lower() != "auto":
        given: Any = text  # check_gamma converts and checks any value
        return check_gamma(given, "--gamma"), "given"
    if compressor.spec == "identity":
        return 1.0, "auto: identity needs no damping"
    from ..tuning import tune_gamma

    if announce:
        print(f"tuning gamma for {compressor.spec} on {announce}: consensus simulation, dim "
              f"{AUTO_DIM}, {AUTO_STEPS} steps per candidate (pass --gamma G to skip) ...",
              flush=True)
    gamma, _ = tune_gamma(W, compressor, dim=AUTO_DIM, steps=AUTO_STEPS, seed=seed,
                          share=share)
    return gamma, (f"auto: consensus tuner (choco.tuning.tune_gamma, dim {AUTO_DIM}, "
                   f"{AUTO_STEPS} steps)")


def _gamma(cfg: TrainConfig, algorithm: Algorithm, topo: Topology | Schedule,
           compressor: Compressor | None, share: Share | None) -> tuple[float | None, str]:
    """γ and where it came from (:func:`resolve_gamma`); ``None`` if the algorithm has none."""
    if not algorithm.uses_gamma:
        return None, "unused"
    if compressor is None:
        raise UsageError(f"algorithm {cfg.algorithm} takes γ but has no compressor; give "
                         "--compressor.")
    loud = not cfg.quiet and (share is None or share[0] == 0)
    return resolve_gamma(cfg.gamma, compressor, tuning_target(topo), cfg.seed, share,
                         topo.spec if loud else None)


def make_plan(cfg: TrainConfig, n: int | None, share: Share | None = None) -> Plan:
    """Validate ``cfg`` and compute everything the nodes share.

    ``n`` is the number of nodes when known (``--nodes`` or the MPI world size). Only the γ
    tuner communicates, and only if ``share`` is given (MPI: the γ grid is split over the
    ranks, every rank gets the same answer).
    """
    _check_numbers(cfg)
    algorithm = get_algorithm(cfg.algorithm)
    algorithm.check_options(gossip_every=cfg.gossip_every, outer=cfg.outer,
                            momentum_mode=cfg.momentum_mode)
    if cfg.momentum_mode == "quasi-global" and cfg.momentum <= 0:
        raise UsageError(f"--momentum-mode quasi-global needs --momentum > 0, got "
                         f"{cfg.momentum}.")
    topo = resolve_topology(cfg.topology, cfg.mixing, n, mpi=share is not None)
    options = parse_model_args(cfg.model_args)
    data = make_dataset(cfg.dataset, cfg.data_dir or None)
    task = make_task(data, cfg.model, cfg.dataset, topo.n, cfg.batch_size, cfg.partition,
                     cfg.seed, cfg.bptt)
    torch.manual_seed(cfg.seed)
    template = task.build_model(cfg.model, options)
    groups = param_groups(template, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    sizes = [p.numel() for p in params]
    base = algorithm.compressor(cfg.compressor)
    # per tensor unless --per-tensor false (lgc learns one code for the whole vector: flat)
    compressor = per_tensor(base, sizes) if base is not None and cfg.per_tensor else base
    message_bytes = algorithm.message_bytes(compressor, sum(sizes), params[0].dtype)
    gamma, source = _gamma(cfg, algorithm, topo, base, share)
    algorithm.check_topology(topo)
    groups_n = [topo.n if algorithm.traffic == "allreduce"
                else (topo.max_peers if topo.time_varying else len(topo.neighbors(i))) + 1
                for i in range(topo.n)]
    schedule = LRSchedule(
        cfg.lr, tuple(peak_lrs(cfg.lr, cfg.lr_scaling, cfg.batch_size, cfg.base_batch_size,
                               groups_n)),
        task.steps_per_epoch, cfg.warmup_epochs, cfg.lr_milestones)
    if not all(math.isfinite(p) for p in schedule.peaks):
        raise UsageError(f"the peak learning rates are not finite ({schedule.peaks[:4]}...); "
                         "lower --lr or use --lr-scaling none.")
    return Plan(cfg=cfg, topology=topo, algorithm=algorithm, task=task, schedule=schedule,
                compressor=compressor, gamma=gamma, gamma_source=source, template=template,
                num_params=sum(sizes), num_tensors=len(sizes), message_bytes=message_bytes)

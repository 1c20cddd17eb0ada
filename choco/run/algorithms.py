"""The training algorithms of ``choco-train --algorithm``, as one registry.

Each :class:`Algorithm` entry declares what it needs (a compressor or not and whether it
wants the unbiased form, a consensus step γ or not, a neighbourhood or a global reduction)
and how its optimizer wrapper is built. The rest of the run layer asks the entry; nothing
else compares algorithm names. To add an algorithm: write its averager (the ``begin`` /
``finish`` / ``state_dict`` interface of :class:`choco.optim.Averager`) and add one entry to
:data:`ALGORITHMS`. The formulas are in docs/algorithms.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from ..errors import CompressionError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from ..comm.base import Communicator
    from ..compress.base import Compressor
    from ..optim import AllReduceSGD, Averager, ChocoSGD, Order

#: what an algorithm sends: compressed messages, full vectors, a global all-reduce, nothing
Traffic = Literal["compressed", "exact", "allreduce", "none"]


@dataclass(frozen=True)
class AveragerArgs:
    """Everything an averager may need, built once per node."""

    comm: Communicator
    row: np.ndarray | None
    compressor: Compressor | None
    gamma: float | None
    seed: int
    #: the topology or time-varying schedule (``topologies``), for averagers that follow
    #: one; ``row`` is ``None`` when it varies
    schedule: Any = None


@dataclass(frozen=True)
class Algorithm:
    """One training algorithm: requirements and how to build its averager.

    Attributes
    ----------
    name
        The ``--algorithm`` value.
    summary
        One line for ``--help`` and the docs.
    traffic
        ``compressed`` (needs ``--compressor``), ``exact`` (full vectors to neighbours),
        ``allreduce`` (a global reduction, no topology traffic) or ``none``.
    unbiased
        Prefers the unscaled unbiased form ``C`` of the compressor (DCD/ECD-PSGD); a biased
        compressor is then used as it is, with a warning.
    uses_gamma
        Takes the consensus step γ (``--gamma``; ``auto`` runs the tuner).
    averager
        Builds the node's averager; ``None`` for all-reduce (it wraps the optimizer).
    """

    name: str
    summary: str
    traffic: Traffic
    unbiased: bool = False
    uses_gamma: bool = False
    averager: Callable[[AveragerArgs], Averager] | None = None
    #: runs on time-varying graphs and with ``+pga:H`` (DCD/ECD keep exact neighbour
    #: replicas, which a changing graph or a global average would leave stale)
    schedules: bool = True

    def check_topology(self, topology: Any) -> None:
        """Refuse a schedule (time-varying, or ``+pga:H``) this algorithm cannot follow."""
        if self.schedules or not (topology.time_varying or topology.pga_every):
            return
        raise UsageError(f"--algorithm {self.name} keeps exact replicas of its neighbours, "
                         f"which go stale on the schedule {topology.spec}; use a static "
                         "topology without +pga, or --algorithm choco/exact.")

    @property
    def needs_compressor(self) -> bool:
        return self.traffic == "compressed"

    def compressor(self, spec: str) -> Compressor | None:
        """The compressor this algorithm sends with (``None`` if it compresses nothing)."""
        if not self.needs_compressor:
            return None
        from ..compress import make_compressor

        comp = make_compressor(spec)
        if self.unbiased:
            try:
                comp = make_compressor(spec, unbiased=True)
            except CompressionError:
                warnings.warn(f"{self.name}: {spec} is biased; DCD/ECD-PSGD theory assumes an "
                              "unbiased compressor (randk, randblock, natural, dither, qsgd)",
                              stacklevel=2)
        return comp

    def message_bytes(self, compressor: Compressor | None, numel: int,
                      dtype: torch.dtype) -> int:
        """Bytes of the one message a node sends to each neighbour per round (0: none)."""
        if self.traffic == "compressed":
            return _compressor_of(self.name, compressor).nbytes(numel, dtype)
        if self.traffic == "exact":
            from ..compress.identity import Identity

            return Identity().nbytes(numel, dtype)
        return 0

    def wrap(self, optimizer: torch.optim.Optimizer, args: AveragerArgs, *, order: str,
             gossip_every: int) -> ChocoSGD | AllReduceSGD:
        """The node's optimizer: the local ``optimizer`` plus this algorithm's communication."""
        from ..optim import AllReduceSGD, ChocoSGD

        if self.averager is None:
            return AllReduceSGD(optimizer, args.comm)
        # ChocoSGD refuses any other order than its Literal's values
        opt = ChocoSGD(optimizer, self.averager(args), order=cast("Order", order),
                       gossip_every=gossip_every)
        if order == "overlap":  # the exchange moves during the backward pass (MPI)
            opt.progress_hooks()
        return opt


def _compressor_of(name: str, compressor: Compressor | None) -> Compressor:
    """The compressor a compressed algorithm needs, or an error saying so."""
    if compressor is None:
        raise UsageError(f"algorithm {name} sends compressed messages and needs a compressor, "
                         "got none; give --compressor (e.g. sign).")
    return compressor


def _row(a: AveragerArgs) -> np.ndarray:
    """The node's row of a static ``W`` (``None`` only for a time-varying schedule)."""
    if a.row is None:
        raise UsageError(f"node {a.comm.rank} has no mixing row: the topology changes every "
                         "round; pass the schedule (AveragerArgs.schedule) instead.")
    return a.row


def _follows_schedule(a: AveragerArgs) -> bool:
    return a.schedule is not None and bool(a.schedule.time_varying or a.schedule.pga_every)


def _choco(a: AveragerArgs) -> Averager:
    from ..gossip import ChocoGossip, check_gamma

    gamma = check_gamma(a.gamma if a.gamma is not None else float("nan"), "--gamma")
    compressor = _compressor_of("choco", a.compressor)
    if _follows_schedule(a):
        from ..timevarying import make_choco_gossip

        return make_choco_gossip(a.comm, a.schedule, compressor, gamma, a.seed)
    return ChocoGossip(a.comm, _row(a), compressor, gamma, a.seed)


def _exact(a: AveragerArgs) -> Averager:
    from ..baselines import ExactGossip

    if _follows_schedule(a):
        from ..timevarying import make_exact_gossip

        return make_exact_gossip(a.comm, a.schedule)
    return ExactGossip(a.comm, _row(a))


def _dcd(a: AveragerArgs) -> Averager:
    from ..baselines import DCDGossip

    return DCDGossip(a.comm, a.row, _compressor_of("dcd", a.compressor), a.seed)


def _ecd(a: AveragerArgs) -> Averager:
    from ..baselines import ECDGossip

    return ECDGossip(a.comm, a.row, _compressor_of("ecd", a.compressor), a.seed)


def _local(a: AveragerArgs) -> Averager:
    from ..baselines import NoGossip

    return NoGossip()


#: every algorithm of ``choco-train``, by name (the order is the order of ``--help``)
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("choco", "CHOCO-SGD: compressed differences to neighbours (arXiv:1907.09356)",
              "compressed", uses_gamma=True, averager=_choco),
    Algorithm("exact", "exact D-PSGD: full vectors to neighbours (arXiv:1705.09056)",
              "exact", averager=_exact),
    Algorithm("allreduce", "centralized SGD: all-reduce of the mean gradient", "allreduce"),
    Algorithm("dcd", "DCD-PSGD: compressed model changes (arXiv:1803.06443, Alg. 1)",
              "compressed", unbiased=True, averager=_dcd, schedules=False),
    Algorithm("ecd", "ECD-PSGD: compressed extrapolations (arXiv:1803.06443, Alg. 2)",
              "compressed", unbiased=True, averager=_ecd, schedules=False),
    Algorithm("local", "local SGD: no communication at all", "none", averager=_local),
)}


def get_algorithm(name: str) -> Algorithm:
    """The registry entry of ``name``, or a :class:`UsageError` listing the valid names."""
    algorithm = ALGORITHMS.get(name)
    if algorithm is None:
        raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {name!r}.")
    return algorithm

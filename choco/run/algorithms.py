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
    from ..outer import OuterFactory
    from ..tracking import BEERTracking, ExactTracking, TrackingSGD

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
    tracker
        Builds the node's two-channel mixer of a gradient-tracking method (gt, beer), which
        :class:`choco.tracking.TrackingSGD` drives; ``None`` for the others.
    channels
        Messages per round (2 for the tracking methods: model and tracker).
    """

    name: str
    summary: str
    traffic: Traffic
    unbiased: bool = False
    uses_gamma: bool = False
    averager: Callable[[AveragerArgs], Averager] | None = None
    tracker: Callable[[AveragerArgs], ExactTracking | BEERTracking] | None = None
    channels: int = 1
    #: runs on time-varying graphs and with ``+pga:H`` (DCD/ECD keep exact neighbour
    #: replicas, which a changing graph or a global average would leave stale)
    schedules: bool = True

    def check_topology(self, topology: Any) -> None:
        """Refuse a schedule (time-varying, or ``+pga:H``) this algorithm cannot follow."""
        if self.schedules or not (topology.time_varying or topology.pga_every):
            return
        why = ("keeps exact replicas of its neighbours, which go stale on a schedule"
               if self.averager is not None else
               "tracks gradients over a fixed mixing matrix (not built for schedules)")
        raise UsageError(f"--algorithm {self.name} {why}, got --topology {topology.spec}; "
                         "use a static topology without +pga, or --algorithm choco/exact.")

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
        """Bytes a node sends to each neighbour per round, all channels (0: none)."""
        if self.traffic == "compressed":
            return self.channels * _compressor_of(self.name, compressor).nbytes(numel, dtype)
        if self.traffic == "exact":
            from ..compress.identity import Identity

            return self.channels * Identity().nbytes(numel, dtype)
        return 0

    def check_options(self, *, gossip_every: int, outer: str, momentum_mode: str) -> None:
        """Refuse the combinations this algorithm does not run (before anything runs)."""
        if momentum_mode not in ("local", "quasi-global"):
            raise UsageError(f"--momentum-mode must be local or quasi-global, got "
                             f"{momentum_mode!r}.")
        parse_outer(outer)
        if self.averager is None and self.tracker is None and (
                outer or momentum_mode != "local"):
            raise UsageError(
                f"--algorithm {self.name} averages gradients every step, so it takes no "
                "--outer and no --momentum-mode quasi-global; for an exact model average use "
                "--algorithm exact on a complete graph (e.g. --topology complete:8).")
        if self.tracker is not None and (outer or gossip_every != 1):
            raise UsageError(
                f"--algorithm {self.name} tracks gradients with one exchange per step; it "
                f"takes no --outer and --gossip-every 1, got --outer {outer!r} and "
                f"--gossip-every {gossip_every}.")

    def wrap(self, optimizer: torch.optim.Optimizer, args: AveragerArgs, *, order: str,
             gossip_every: int, outer: str = "", momentum_mode: str = "local",
             ) -> ChocoSGD | AllReduceSGD | TrackingSGD:
        """The node's optimizer: the local ``optimizer`` plus this algorithm's communication.

        ``outer``: an ``--outer`` spec (:func:`parse_outer`); ``momentum_mode``: ``local`` or
        ``quasi-global``.
        """
        from ..optim import AllReduceSGD, ChocoSGD
        from ..tracking import TrackingSGD

        self.check_options(gossip_every=gossip_every, outer=outer,
                           momentum_mode=momentum_mode)
        if self.tracker is not None:
            return TrackingSGD(optimizer, self.tracker(args), momentum_mode=momentum_mode)
        if self.averager is None:
            return AllReduceSGD(optimizer, args.comm)
        # ChocoSGD refuses any other order than its Literal's values
        opt = ChocoSGD(optimizer, self.averager(args), order=cast("Order", order),
                       gossip_every=gossip_every, outer=parse_outer(outer),
                       momentum_mode=momentum_mode)
        if order == "overlap":  # the exchange moves during the backward pass (MPI)
            opt.progress_hooks()
        return opt


#: ``--outer`` names: the torch optimizer and the options it fixes
_OUTER_KINDS = {"nesterov": ("SGD", {"nesterov": True, "momentum": 0.9}),
                "sgd": ("SGD", {}), "adam": ("Adam", {})}
_OUTER_KEYS = {"SGD": ("lr", "momentum", "nesterov", "dampening", "weight_decay"),
               "Adam": ("lr", "beta1", "beta2", "eps", "weight_decay")}


def parse_outer(spec: str) -> OuterFactory | None:
    """``--outer``: ``""`` (none), ``nesterov:lr=0.7,momentum=0.9``, ``sgd:lr=1``,
    ``adam:lr=1e-3,beta1=0.9,beta2=0.99`` → a factory of the outer ``torch.optim``
    optimizer (:class:`choco.outer.OuterStep`). ``nesterov`` is ``SGD(nesterov=True)`` with
    momentum 0.9 unless given; ``lr`` is required."""
    import torch

    text = spec.strip()
    if not text:
        return None
    kind, _, rest = text.partition(":")
    fix = "e.g. nesterov:lr=0.7,momentum=0.9, sgd:lr=1 or adam:lr=0.001"
    if kind.strip().lower() not in _OUTER_KINDS:
        raise UsageError(f"--outer must start with {', '.join(_OUTER_KINDS)}, got {spec!r}; "
                         f"{fix}.")
    cls_name, fixed = _OUTER_KINDS[kind.strip().lower()]
    options: dict = dict(fixed)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = (v.strip() for v in item.partition("="))
        if not sep or key not in _OUTER_KEYS[cls_name]:
            raise UsageError(f"--outer {kind}: options are {', '.join(_OUTER_KEYS[cls_name])} "
                             f"as key=value, got {item!r}; {fix}.")
        if key == "nesterov":
            options[key] = value.lower() in ("1", "true", "yes")
            continue
        try:
            options[key] = float(value)
        except ValueError:
            raise UsageError(f"--outer {kind}: {key} must be a number, got {value!r}.") \
                from None
    if "lr" not in options or not options["lr"] > 0:
        raise UsageError(f"--outer {spec!r} needs a learning rate lr > 0; {fix}.")
    if cls_name == "Adam":
        betas = (options.pop("beta1", 0.9), options.pop("beta2", 0.999))
        options["betas"] = betas
    try:  # build once now: torch checks the values (momentum >= 0, betas in [0, 1), ...)
        getattr(torch.optim, cls_name)([torch.zeros(1)], **options)
    except ValueError as exc:
        raise UsageError(f"--outer {spec!r}: {exc}; {fix}.") from None
    optimizer_class = getattr(torch.optim, cls_name)

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return optimizer_class(params, **options)

    return factory


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


def _gt(a: AveragerArgs) -> ExactTracking:
    from ..tracking import ExactTracking

    return ExactTracking(a.comm, a.row)


def _beer(a: AveragerArgs) -> BEERTracking:
    from ..gossip import check_gamma
    from ..tracking import BEERTracking

    gamma = check_gamma(a.gamma if a.gamma is not None else float("nan"), "--gamma")
    return BEERTracking(a.comm, a.row, _compressor_of("beer", a.compressor), gamma, a.seed)


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
    Algorithm("gt", "exact gradient tracking (DIGing): model and tracker to neighbours",
              "exact", tracker=_gt, channels=2, schedules=False),
    Algorithm("beer", "BEER: gradient tracking, compressed model and tracker channels "
              "(arXiv:2201.13320)", "compressed", uses_gamma=True, tracker=_beer, channels=2,
              schedules=False),
)}


def get_algorithm(name: str) -> Algorithm:
    """The registry entry of ``name``, or a :class:`UsageError` listing the valid names."""
    algorithm = ALGORITHMS.get(name)
    if algorithm is None:
        raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {name!r}.")
    return algorithm

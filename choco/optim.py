"""``ChocoSGD``: any ``torch.optim.Optimizer`` plus a gossip round, by composition.

CHOCO-SGD (Alg. 1 of arXiv:1907.09356) is a local step followed by CHOCO-Gossip. As torch's
``PostLocalSGDOptimizer`` does for model averaging, :class:`ChocoSGD` wraps the user's
optimizer (momentum, Nesterov and weight decay stay local, and are never sent) and runs the
gossip over one flat buffer holding every parameter.

Orders (docs/algorithms.md, "Orders"):

* ``"overlap"`` (default; the authors' code = ICLR Alg. 1): local step, ``finish`` the
  exchange posted at the previous step (consensus step included), then ``begin`` the next
  exchange, which stays in flight during the next forward/backward pass. The round before
  the first step is empty. With identity and γ = 1 this is D-PSGD, ``X⁺ = W X − η D(X)``.
* ``"sync"``: local step, then ``begin`` and ``finish`` at once: ``x½ = x − η d``,
  ``q = Q(x½ − x̂)``, ``x = x½ + γ (s − x̂)``. With identity and γ = 1 this is the
  adapt-then-combine form ``X⁺ = W (X − η D)``.

Outer step (``outer=FACTORY``, DiLoCo-style, docs/algorithms.md "Local steps with an outer
optimizer"): every ``gossip_every`` = H local steps, the pseudo-gradient ``θ − x`` of the
node's anchor θ goes through an outer optimizer, x restarts from the new θ, one averaging
round runs, and its result is the next anchor (:mod:`choco.outer`). In the ``sync`` order
the round completes at once; in ``overlap`` it stays in flight during the next H local steps
and its consensus correction is added to both x and θ at the next outer step (one round of
delay).

Quasi-global momentum (``momentum_mode="quasi-global"``, arXiv:2102.04761): the local SGD's
momentum buffer is rebuilt from the model's displacement over each step (:mod:`choco.qgm`).

Usage, a plain training loop with two changed lines::

    opt = ChocoSGD(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), gossip)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()          # local step + one CHOCO gossip round
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from .comm.base import Communicator
from .errors import GossipError
from .flat import FlatParameters
from .outer import OuterFactory, OuterStep
from .qgm import QuasiGlobalMomentum, check_momentum_mode
from .sim import allreduce_next, local_step

Order = Literal["overlap", "sync"]


class Averager(Protocol):
    """What :class:`ChocoSGD` needs from a gossip: :class:`choco.gossip.ChocoGossip` or a
    baseline of :mod:`choco.baselines`."""

    #: ``begin`` and ``finish`` must run back to back (DCD/ECD, local): no overlap
    synchronous: ClassVar[bool]

    @property
    def in_flight(self) -> bool: ...
    @property
    def bytes_sent(self) -> int: ...
    def init(self, x: torch.Tensor) -> None: ...
    def begin(self, x: torch.Tensor) -> None: ...
    def finish(self, x: torch.Tensor) -> None: ...
    def progress(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, sd: dict) -> None: ...


class _Wrapped:
    """What both wrappers share: the user's optimizer and the flat parameter buffer."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.flat = FlatParameters(p for g in optimizer.param_groups for p in g["params"])
        self.local_steps = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def x(self) -> torch.Tensor:
        """This node's model as one flat vector (a live view, not a copy)."""
        return self.flat.buffer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


class ChocoSGD(_Wrapped):
    """Local optimizer step, then one gossip round over all parameters as one flat buffer.

    Parameters
    ----------
    optimizer
        Any ``torch.optim.Optimizer`` over the model's parameters. Its parameters are moved
        into one flat buffer (they become views of it), which is what is gossiped.
    gossip
        A :class:`choco.gossip.ChocoGossip` (or a baseline with the same methods).
    order
        ``"overlap"`` (default, ICLR Alg. 1) or ``"sync"``; see the module docstring.
    gossip_every
        Local steps between gossip rounds (SBC's "communication delay"; 1 = every step).
    outer
        ``None`` (default), or a factory ``FACTORY(list_of_tensors) -> torch.optim.Optimizer``
        for the outer step on the pseudo-gradient ``anchor − x`` before every gossip round
        (:mod:`choco.outer`), e.g.
        ``lambda p: torch.optim.SGD(p, lr=0.7, momentum=0.9, nesterov=True)``.
    momentum_mode
        ``"local"`` (default: the optimizer's own momentum) or ``"quasi-global"``
        (:mod:`choco.qgm`; the optimizer must be ``torch.optim.SGD`` with momentum).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, gossip: Averager, *,
                 order: Order = "overlap", gossip_every: int = 1,
                 outer: OuterFactory | None = None, momentum_mode: str = "local") -> None:
        if order not in ("overlap", "sync"):
            raise GossipError(f"order must be 'overlap' or 'sync', got {order!r}")
        if gossip_every < 1:
            raise GossipError(f"gossip_every must be >= 1, got {gossip_every}")
        super().__init__(optimizer)
        self.gossip = gossip
        self.order = order
        self.gossip_every = gossip_every
        with torch.no_grad():
            gossip.init(self.flat.buffer)
        #: the anchor and outer optimizer (``None``: no outer step)
        self.outer = OuterStep(self.flat.buffer, outer) if outer is not None else None
        self.qgm = (QuasiGlobalMomentum(optimizer, self.flat)
                    if check_momentum_mode(momentum_mode) == "quasi-global" else None)

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this node has put on the wire so far."""
        return self.gossip.bytes_sent

    def step(self, closure=None):
        """Local optimizer step, then a gossip round every ``gossip_every`` steps."""
        if self.qgm is not None:
            self.qgm.before_step()
        loss = self.optimizer.step(closure)
        local_step()  # the simulated clock, if this node runs under one
        self.local_steps += 1
        if self.local_steps % self.gossip_every == 0:
            self.gossip_round()
        if self.qgm is not None:
            self.qgm.after_step()
        return loss

    def skip_step(self) -> None:
        """No local step, but the gossip round it would have had (a node that must stop
        computing, e.g. on a non-finite loss, keeps its neighbours' exchanges going)."""
        self.local_steps += 1
        if self.local_steps % self.gossip_every == 0:
            self.gossip_round()

    @torch.no_grad()
    def gossip_round(self) -> None:
        x = self.flat.buffer
        if self.outer is not None:
            self._outer_round(self.outer, x)
            return
        if self.order == "sync" or self.gossip.synchronous:
            self.gossip.begin(x)
            self.gossip.finish(x)
            return
        if self.gossip.in_flight:
            self.gossip.finish(x)
        self.gossip.begin(x)

    def _outer_round(self, outer: OuterStep, x: torch.Tensor) -> None:
        """Outer step on the anchor, x ← anchor, one averaging round, anchor ← result.

        ``overlap``: the round posted at the previous outer step is finished first and its
        correction (x after − x before) is added to the anchor too, so the pseudo-gradient
        is the local progress alone; the new round stays in flight until the next one.
        """
        if self.order == "sync" or self.gossip.synchronous:
            outer.apply(x)
            self.gossip.begin(x)
            self.gossip.finish(x)
            outer.reset(x)
            return
        if self.gossip.in_flight:
            outer.anchor.sub_(x)
            self.gossip.finish(x)
            outer.anchor.add_(x)
        outer.apply(x)
        self.gossip.begin(x)

    def progress(self) -> None:
        """Advance the exchange in flight without blocking (one ``MPI_Test`` under MPI).

        In the ``overlap`` order the messages are posted before the forward and backward
        passes; MPICH moves a non-blocking exchange only inside MPI calls, so calling this
        during the computation lets the transfer finish there instead of in the next
        :meth:`step`. :meth:`progress_hooks` calls it from the backward pass.
        """
        self.gossip.progress()

    def progress_hooks(self) -> list:
        """Call :meth:`progress` each time a parameter's gradient is accumulated in the
        backward pass (a few dozen cheap calls per step). Returns the hook handles
        (``handle.remove()`` undoes them)."""
        return [p.register_post_accumulate_grad_hook(lambda _p: self.progress())
                for g in self.optimizer.param_groups for p in g["params"]]

    @torch.no_grad()
    def flush(self) -> None:
        """Finish an exchange still in flight (consensus step included); posts nothing."""
        if self.gossip.in_flight:
            self.gossip.finish(self.flat.buffer)

    def state_dict(self) -> dict:
        """Optimizer state, gossip state (x̂, s, in-flight message, step) and step count."""
        sd = {"optimizer": self.optimizer.state_dict(), "gossip": self.gossip.state_dict(),
              "local_steps": self.local_steps}
        if self.outer is not None:
            sd["outer"] = self.outer.state_dict()
        if self.qgm is not None:
            sd["qgm"] = self.qgm.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict`; collective when a message was in flight."""
        self.optimizer.load_state_dict(sd["optimizer"])
        self.gossip.load_state_dict(sd["gossip"])
        self.local_steps = int(sd["local_steps"])
        for name, part in (("outer", self.outer), ("qgm", self.qgm)):
            if (name in sd) != (part is not None):
                raise GossipError(
                    f"the checkpoint {'has' if name in sd else 'lacks'} the {name} state but "
                    f"this optimizer {'lacks' if part is None else 'has'} it; resume with the "
                    "options the run was started with.")
            if part is not None:
                part.load_state_dict(sd[name])


class AllReduceSGD(_Wrapped):
    """Centralized baseline: all-reduce the mean gradient, then the same step everywhere.

    Equivalent to gossip with ``W = 11ᵀ/n``. ``bytes_sent`` counts what a ring all-reduce
    sends per node, ``2 (n−1)/n`` times the gradient's bytes per step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, comm: Communicator) -> None:
        super().__init__(optimizer)
        self.comm = comm
        self.bytes_sent = 0

    def step(self, closure=None):
        grad = self.flat.grad_buffer()
        local_step()  # the simulated clock, if this node runs under one
        allreduce_next(grad.numel() * grad.element_size())
        total = self.comm.allreduce(grad.detach().cpu().numpy())
        mean = torch.from_numpy(np.asarray(total) / self.comm.size).to(grad)
        self.flat.set_grads(mean)
        n = self.comm.size
        self.bytes_sent += round(2 * (n - 1) / n * grad.numel() * grad.element_size())
        self.local_steps += 1
        return self.optimizer.step(closure)

    def skip_step(self) -> None:
        """No step of its own, but the all-reduce the other nodes wait for (a zero gradient)."""
        allreduce_next(self.flat.buffer.numel() * self.flat.buffer.element_size())
        self.comm.allreduce(torch.zeros_like(self.flat.buffer).cpu().numpy())
        n = self.comm.size
        self.bytes_sent += round(2 * (n - 1) / n * self.flat.buffer.numel()
                                 * self.flat.buffer.element_size())
        self.local_steps += 1

    def flush(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "local_steps": self.local_steps,
                "bytes_sent": self.bytes_sent}

    def load_state_dict(self, sd: dict) -> None:
        self.optimizer.load_state_dict(sd["optimizer"])
        self.local_steps = int(sd["local_steps"])
        self.bytes_sent = int(sd["bytes_sent"])

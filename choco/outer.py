"""The outer step of local-steps training: an optimizer applied to the pseudo-gradient.

DiLoCo (Douillard et al., arXiv:2311.08105, Alg. 1) runs H inner steps from a shared anchor
θ, forms the pseudo-gradient Δ = θ − x, averages it and lets an *outer* optimizer (Nesterov,
lr 0.7, momentum 0.9) update θ. :class:`OuterStep` is one node's half of that: its own anchor
θ_i and a ``torch.optim.Optimizer`` built over it. The averaging is left to the gossip round
:class:`choco.optim.ChocoSGD` runs right after (exact, CHOCO, or any averager), so every
H local steps a node computes::

    θ_i.grad = θ_i − x_i          pseudo-gradient Δ_i
    outer.step()                  θ_i ← OuterOpt(θ_i, Δ_i)   e.g. SGD(lr, momentum, nesterov)
    x_i ← θ_i                     the model restarts from the updated anchor
    x_i ← average(x_i)            one round of the averager
    θ_i ← x_i                     the averaged model is the next anchor

With an exact average and a linear outer optimizer (SGD with momentum) this is DiLoCo: the
average of the outer steps is the outer step of the averaged pseudo-gradient. With
``SGD(lr=1)`` and no momentum the outer step is x_i ← θ_i − (θ_i − x_i) = x_i, i.e. plain
local steps followed by averaging (to rounding). With a time-varying averager
(:mod:`choco.timevarying`, e.g. a ``matching`` schedule: one random peer per round, the
NoLoCo-like configuration) the round is the schedule's round k at the k-th outer step: the
schedule counts averaging rounds, not local steps. The outer optimizer is the plain one given
by ``FACTORY`` (not NoLoCo's modified Nesterov step, arXiv:2506.10911).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import GossipError

__all__ = ["OuterFactory", "OuterStep"]

#: builds the outer optimizer from the list of tensors it updates (here: the one anchor)
OuterFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


class OuterStep:
    """One node's anchor θ_i and its outer optimizer.

    Parameters
    ----------
    x
        The node's flat model vector; the anchor starts as a copy of it (all nodes start
        from the same broadcast model, so all anchors start equal).
    factory
        ``factory([anchor])`` returns any ``torch.optim.Optimizer`` over the anchor, e.g.
        ``lambda p: torch.optim.SGD(p, lr=0.7, momentum=0.9, nesterov=True)``.
    """

    def __init__(self, x: torch.Tensor, factory: OuterFactory) -> None:
        self.anchor = x.detach().clone()
        self.optimizer = factory([self.anchor])
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise GossipError(
                f"outer must build a torch.optim.Optimizer from a list of tensors, got "
                f"{type(self.optimizer).__name__}; pass e.g. "
                "lambda p: torch.optim.SGD(p, lr=0.7, momentum=0.9, nesterov=True)."
            )
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if len(params) != 1 or params[0] is not self.anchor:
            raise GossipError(
                "the outer optimizer must update exactly the tensor list it is given (the "
                f"anchor), got {len(params)} other tensor(s); build it from its argument."
            )

    @torch.no_grad()
    def apply(self, x: torch.Tensor) -> None:
        """θ.grad = θ − x, one outer step on θ, then x ← θ (in place)."""
        self.anchor.grad = self.anchor - x
        self.optimizer.step()
        self.anchor.grad = None
        x.copy_(self.anchor)

    @torch.no_grad()
    def reset(self, x: torch.Tensor) -> None:
        """θ ← x: the averaged model becomes the next anchor."""
        self.anchor.copy_(x)

    def state_dict(self) -> dict:
        """The anchor and the outer optimizer's state (momentum buffers, Adam moments)."""
        return {"anchor": self.anchor.clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict` (the anchor in place: the optimizer keeps it)."""
        anchor = sd["anchor"]
        if anchor.shape != self.anchor.shape:
            raise GossipError(
                f"the checkpoint's outer anchor has {anchor.numel()} elements but the model "
                f"has {self.anchor.numel()}; resume with the model the run was started with."
            )
        with torch.no_grad():
            self.anchor.copy_(anchor)
        self.optimizer.load_state_dict(sd["optimizer"])

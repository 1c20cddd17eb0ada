"""Quasi-global momentum: a momentum buffer built from the model's displacement.

Lin, Karimireddy, Stich, Jaggi, *Quasi-Global Momentum: Accelerating Decentralized Deep
Learning on Heterogeneous Data*, ICML 2021, arXiv:2102.04761, Alg. 1 (QG-DSGDm). Node i with
local gradient g_i (weight decay included), momentum β and learning rate η::

    m_i  = β m̂_i + g_i                         local momentum on the quasi-global buffer
    x_i ← x_i − η m_i      (Nesterov: x_i ← x_i − η (g_i + β m_i))
    x_i ← averaging round(x_i)                 gossip, exact or compressed
    d_i  = (x_i^before − x_i^after) / η         the displacement of the whole step
    m̂_i ← β m̂_i + (1 − β) d_i

The displacement carries what the neighbours contributed in the averaging round, so m̂_i
approximates the momentum of the network average instead of the node's own, which on
heterogeneous data points away from the global optimum.

Implementation: the node's ``torch.optim.SGD`` does the local step itself. Before each step
its momentum buffers are set to m̂ (so ``buf = β m̂ + g`` is line 1), after the step and the
averaging round m̂ is updated from the displacement; ``m̂`` is the only extra state.
"""

from __future__ import annotations

import torch

from .errors import GossipError
from .flat import FlatParameters

__all__ = ["MOMENTUM_MODES", "QuasiGlobalMomentum", "check_momentum_mode"]

#: the values of ``momentum_mode``
MOMENTUM_MODES = ("local", "quasi-global")


def check_momentum_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`MOMENTUM_MODES`, else raise."""
    if mode not in MOMENTUM_MODES:
        raise GossipError(f"momentum mode must be one of {', '.join(MOMENTUM_MODES)}, got "
                          f"{mode!r}; quasi-global is arXiv:2102.04761, local the default.")
    return mode


class QuasiGlobalMomentum:
    """The quasi-global buffer m̂ of one node, driving its ``torch.optim.SGD``.

    Parameters
    ----------
    optimizer
        The node's local ``torch.optim.SGD`` with ``momentum > 0`` and ``dampening = 0``
        (β is each group's ``momentum``, η its ``lr`` at the step).
    flat
        The node's :class:`~choco.flat.FlatParameters` (the optimizer's parameters are
        views of its buffer).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, flat: FlatParameters) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise GossipError(f"quasi-global momentum drives a torch.optim.SGD, got "
                              f"{type(optimizer).__name__}; use SGD with momentum > 0.")
        for group in optimizer.param_groups:
            if group["momentum"] <= 0 or group["dampening"] != 0:
                raise GossipError(
                    "quasi-global momentum needs momentum > 0 and dampening 0 in every "
                    f"parameter group, got momentum {group['momentum']} and dampening "
                    f"{group['dampening']}; set --momentum (e.g. 0.9).")
        self.optimizer = optimizer
        self.flat = flat
        x = flat.buffer
        #: the quasi-global buffer m̂ (flat, like x)
        self.buffer = torch.zeros_like(x)
        self._scratch = torch.zeros_like(x)  # the optimizer's buffers are views of it
        self._before = torch.zeros_like(x)
        # (slice of the flat vector, the group) for every parameter, in buffer order
        index = {id(p): i for i, p in enumerate(flat.params)}
        offsets = [0]
        for n in flat.sizes:
            offsets.append(offsets[-1] + n)
        self._segments: list[tuple[slice, dict]] = []
        self._views: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                i = index[id(p)]
                seg = slice(offsets[i], offsets[i + 1])
                self._segments.append((seg, group))
                self._views.append((p, self._scratch[seg].view_as(p)))

    @torch.no_grad()
    def before_step(self) -> None:
        """Remember x and hand m̂ to the optimizer as its momentum buffers."""
        self._before.copy_(self.flat.buffer)
        self._scratch.copy_(self.buffer)
        for p, view in self._views:
            self.optimizer.state[p]["momentum_buffer"] = view

    @torch.no_grad()
    def after_step(self) -> None:
        """m̂ ← β m̂ + (1 − β)(x_before − x_after)/η, per parameter group."""
        x = self.flat.buffer
        for seg, group in self._segments:
            lr, beta = float(group["lr"]), float(group["momentum"])
            if lr <= 0:
                raise GossipError(f"quasi-global momentum divides by the learning rate, got "
                                  f"lr {lr}; use a positive learning rate.")
            d = (self._before[seg] - x[seg]).div_(lr)
            self.buffer[seg].mul_(beta).add_(d, alpha=1 - beta)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.clone()}

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            self.buffer.copy_(sd["buffer"])

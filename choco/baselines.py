"""Baselines the CHOCO paper compares against, behind the same ``begin``/``finish`` round.

* :class:`ExactGossip`: exact (uncompressed) D-PSGD, arXiv:1705.09056:
  ``x_i ← Σ_j w_ij x_j − η d_i`` (full fp32/fp64 vectors on the wire).
* :class:`DCDGossip`: DCD-PSGD, arXiv:1803.06443 Alg. 1 (difference compression with exact
  replicas of the neighbours): ``x½_i = Σ_j w_ij x_j − η d_i``, ``q_i = C(x½_i − x_i)``,
  ``x_j += q_j`` for ``j ∈ N_i ∪ {i}``.
* :class:`ECDGossip`: ECD-PSGD, arXiv:1803.06443 Alg. 2 (extrapolation compression with
  estimates ``ŷ_j``): ``x_i⁺ = Σ_j w_ij ŷ_j − η d_i``, ``z_i = (1 − t/2) x_i + (t/2) x_i⁺``,
  ``ŷ_j ← (1 − 2/t) ŷ_j + (2/t) C(z_j)``, ``t`` counting from 1.
* :class:`NoGossip`: local SGD without communication.

Centralized all-reduce SGD averages gradients instead of models: see
:class:`choco.optim.AllReduceSGD`.

DCD and ECD need an *unbiased* compressor ``C`` (rand-k scaled by d/k, unscaled QSGD); the
CHOCO paper (Table 1) shows them diverging at high compression. The local step has already
been applied to ``x`` when ``begin(x)`` is called (``x = x_prev − η d``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .comm.base import Communicator
from .compress.base import Compressor, decode
from .compress.identity import Identity
from .errors import GossipError
from .gossip import _HoldsRound
from .neighbourhood import NeighbourRound, RoundState, round_seed

__all__ = ["BASELINES", "DCDGossip", "ECDGossip", "ExactGossip", "NoGossip"]


class ExactGossip(_HoldsRound):
    """Exact D-PSGD: send ``x`` uncompressed, then ``x += Σ_j w_ij x_j^sent − x_i^sent``.

    In the training loop's default order (local step, finish, begin) this gives
    ``x⁺ = W x − η D(x)``, the D-PSGD update; with ``begin`` right after the local step it
    gives the adapt-then-combine form ``x⁺ = W (x − η D)``.
    """

    synchronous: ClassVar[bool] = False

    def __init__(self, comm: Communicator, W_row) -> None:
        self.round = NeighbourRound(comm, W_row)
        self.codec = Identity()

    def init(self, x: torch.Tensor) -> None:
        pass

    def begin(self, x: torch.Tensor) -> None:
        self.round.post(self.codec.encode(x))

    def finish(self, x: torch.Tensor) -> None:
        message, received = self.round.wait()
        self.round.check_received(received, self.codec, x.numel())
        sent = decode(self.codec, message, x.dtype, x.device)
        mixed = sent * self.w_self
        for j, w, buf in zip(self.comm.neighbors, self.w_neighbors, received, strict=True):
            self.round.decode_add_(self.codec, j, buf, mixed, alpha=w)
        x.add_(mixed - sent)

    def state_dict(self) -> dict:
        return self.round.state().to_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.round.restore(RoundState.from_dict(sd))


class _Replicated(_HoldsRound):
    """Shared machinery of DCD/ECD: compressed messages, per-neighbour vectors kept locally."""

    synchronous: ClassVar[bool] = True

    def __init__(self, comm: Communicator, W_row, compressor: Compressor, seed: int) -> None:
        self.round = NeighbourRound(comm, W_row)
        self.compressor = compressor
        self.seed = seed
        self.step = 0
        #: own vector (index 0) then one per neighbour, in neighbour order
        self.copies: list[torch.Tensor] | None = None

    def init(self, x: torch.Tensor) -> None:
        """Start every copy at the common starting model ``x`` (broadcast from rank 0)."""
        self.copies = [x.detach().clone() for _ in range(1 + len(self.comm.neighbors))]

    def _copies(self) -> list[torch.Tensor]:
        if self.copies is None:
            raise GossipError(f"{type(self).__name__}: call init(x) with the starting model")
        return self.copies

    def _mix(self, copies: list[torch.Tensor]) -> torch.Tensor:
        out = copies[0] * self.w_self
        for w, c in zip(self.w_neighbors, copies[1:], strict=True):
            out.add_(c, alpha=w)
        return out

    def _send(self, v: torch.Tensor) -> None:
        self.round.post(self.compressor.encode(v, round_seed(self.seed, self.comm.rank,
                                                              self.step)))

    def _apply(self, update) -> None:
        message, received = self.round.wait()
        copies = self._copies()
        self.round.check_received(received, self.compressor, copies[0].numel())
        senders = [self.comm.rank, *self.comm.neighbors]
        for sender, c, buf in zip(senders, copies, [message, *received], strict=True):
            with self.round.from_rank(sender):
                update(c, buf)
        self.step += 1

    def state_dict(self) -> dict:
        if self.round.in_flight:
            raise GossipError(f"{type(self).__name__} is synchronous: nothing may be in flight")
        return {"copies": None if self.copies is None else [c.clone() for c in self.copies],
                "step": self.step, "bytes_sent": self.bytes_sent}

    def load_state_dict(self, sd: dict) -> None:
        copies = sd.get("copies")
        self.copies = None if copies is None else [c.clone() for c in copies]
        self.step = int(sd.get("step", 0))
        self.round.restore(RoundState(int(sd.get("bytes_sent", 0))))


class DCDGossip(_Replicated):
    """DCD-PSGD (arXiv:1803.06443, Alg. 1): compress the change of the model itself."""

    def begin(self, x: torch.Tensor) -> None:
        copies = self._copies()
        # x = x_i - η d_i (local step done), and x_i = copies[0] exactly
        x_half = self._mix(copies).add_(x).sub_(copies[0])
        self._send(x_half - copies[0])

    def finish(self, x: torch.Tensor) -> None:
        self._apply(lambda c, buf: self.compressor.decode_add_(buf, c.view(-1)))
        x.copy_(self._copies()[0])


class ECDGossip(_Replicated):
    """ECD-PSGD (arXiv:1803.06443, Alg. 2): extrapolate, compress, average the estimates."""

    def __init__(self, comm: Communicator, W_row, compressor: Compressor, seed: int) -> None:
        super().__init__(comm, W_row, compressor, seed)
        self.x_prev: torch.Tensor | None = None
        self._x_next: torch.Tensor | None = None

    def begin(self, x: torch.Tensor) -> None:
        copies = self._copies()
        x_prev = self.x_prev if self.x_prev is not None else copies[0]
        t = self.step + 1
        x_next = self._mix(copies).add_(x).sub_(x_prev)  # Σ_j w_ij ŷ_j − η d_i
        z = x_prev * (1 - t / 2) + x_next * (t / 2)
        self._x_next = x_next
        self._send(z)

    def finish(self, x: torch.Tensor) -> None:
        t = self.step + 1

        def update(c: torch.Tensor, buf: torch.Tensor) -> None:
            c.mul_(1 - 2 / t)
            self.compressor.decode_add_(buf, c.view(-1), alpha=2 / t)

        if self._x_next is None:
            raise GossipError(f"{type(self).__name__}: finish(x) without begin(x)")
        self._apply(update)
        x.copy_(self._x_next)
        self.x_prev = x.detach().clone()

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["x_prev"] = None if self.x_prev is None else self.x_prev.clone()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        x_prev = sd.get("x_prev")
        self.x_prev = None if x_prev is None else x_prev.clone()


class NoGossip:
    """No communication: every node trains alone (the ``local`` baseline)."""

    synchronous: ClassVar[bool] = True
    in_flight: ClassVar[bool] = False
    bytes_sent: ClassVar[int] = 0

    def init(self, x: torch.Tensor) -> None:
        pass

    def begin(self, x: torch.Tensor) -> None:
        pass

    def finish(self, x: torch.Tensor) -> None:
        pass

    def progress(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


#: the gossip classes of the baselines, by the name ``choco-train --algorithm`` uses
BASELINES: dict[str, type] = {
    "exact": ExactGossip, "dcd": DCDGossip, "ecd": ECDGossip, "local": NoGossip,
}

"""Gradient tracking, exact (DIGing) and compressed (BEER), for heterogeneous data.

D-PSGD and CHOCO-SGD converge to a neighbourhood of the optimum whose size grows with how
different the nodes' objectives are: at a fixed point x_i = Σ_j w_ij x_j − η ∇f_i(x_i) every
node still follows its *own* gradient. Gradient tracking gives each node a tracker y_i of the
network's mean gradient and steps along it.

**Exact gradient tracking** (DIGing, Nedić, Olshevsky, Shi 2017, arXiv:1607.03218, eq. (3)),
node i, loss gradient g_i(x) = ∇f_i(x)::

    x_i⁺ = Σ_j w_ij x_j − η y_i
    y_i⁺ = Σ_j w_ij y_j + g_i(x_i⁺) − g_i(x_i),        y_i⁰ = g_i(x_i⁰)

Σ_i y_i = Σ_i g_i(x_i) at every step (W doubly stochastic), so at a fixed point every y_i is
the mean gradient and the common x is a stationary point of the *global* objective.

**BEER** (Zhao, Li, Li, Richtárik, Chi, arXiv:2201.13320, Alg. 1): the same with compressed
messages on two channels, each with CHOCO-style public copies (H_i of the model, G_i of the
tracker; memory-efficient sums s^H_i = Σ_j w_ij H_j and s^G_i likewise)::

    H_i ← H_i + C(x_i − H_i),     G_i ← G_i + C(y_i − G_i)        one exchange, two messages
    x_i⁺ = x_i + γ (s^H_i − H_i) − η y_i
    y_i⁺ = y_i + γ (s^G_i − G_i) + g_i(x_i⁺) − g_i(x_i)

With C = identity and γ = 1 the public copies equal what was sent and BEER is exact gradient
tracking (to rounding). Any biased or unbiased compressor may be used (a contractive C:
``make_compressor`` already returns unbiased ones scaled by 1/(1 + ω)).

**With a torch optimizer.** The node's optimizer takes the step ``−η y_i``: the wrapper
hands it y_i as the gradient. Its weight decay (the same L2 term on every node, so it needs
no tracking) and its momentum act on y_i as they would on a gradient; at a fixed point the
momentum direction is y/(1 − β), so the fixed point is unchanged. Both messages travel in
one exchange, synchronously (the step needs the neighbours' values of this step).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .comm.base import Communicator
from .compress.base import Compressor, decode, message_nbytes
from .compress.identity import Identity
from .compress.stateful import is_stateful
from .errors import CompressionError, GossipError
from .gossip import _HoldsRound, check_gamma
from .neighbourhood import NeighbourRound, RoundState, round_seed
from .optim import _Wrapped
from .qgm import QuasiGlobalMomentum, check_momentum_mode
from .wire.framing import parse_header

__all__ = ["BEERTracking", "ExactTracking", "TrackingSGD"]


def _split(compressor: Compressor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a two-channel message into its model and tracker messages (the first message's
    header gives its length)."""
    header = parse_header(buf, compressor.spec)
    length = message_nbytes(compressor, header.numel, header.flags)
    if length >= buf.numel():
        raise CompressionError(f"{compressor.spec}: a two-channel message of {buf.numel()} "
                               f"bytes cannot hold a first message of {length} bytes and a "
                               "second one")
    return buf[:length], buf[length:]


class _TwoChannels(_HoldsRound):
    """One synchronous exchange per step carrying two messages (model, tracker)."""

    synchronous: ClassVar[bool] = True
    codec: Compressor

    def _exchange(self, first: torch.Tensor, second: torch.Tensor, numel: int,
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Post both messages as one buffer; ``[(model, tracker)]`` for self then each
        neighbour, checked before anything is decoded."""
        self.round.post(torch.cat([first, second]))
        _, received = self.round.wait()
        parts = [(first, second)]
        for sender, buf in zip(self.comm.neighbors, received, strict=True):
            with self.round.from_rank(sender):
                parts.append(_split(self.codec, buf))
        for k in range(2):
            self.round.check_received([p[k] for p in parts[1:]], self.codec, numel)
        return parts

    def state_dict(self) -> dict:
        return self.round.state().to_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.round.restore(RoundState.from_dict(sd))


class ExactTracking(_TwoChannels):
    """The mixing of exact gradient tracking: full x_i and y_i to every neighbour.

    :meth:`exchange` returns the corrections ``(Σ_j w_ij x_j − x_i, Σ_j w_ij y_j − y_i)``.
    """

    def __init__(self, comm: Communicator, W_row) -> None:
        self.round = NeighbourRound(comm, W_row)
        self.codec = Identity()

    def init(self, x: torch.Tensor) -> None:
        pass

    def exchange(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self._exchange(self.codec.encode(x), self.codec.encode(y), x.numel())
        out = []
        for k, v in enumerate((x, y)):
            sent = decode(self.codec, parts[0][k], v.dtype, v.device)
            mixed = sent * self.w_self
            for j, w, p in zip(self.comm.neighbors, self.w_neighbors, parts[1:], strict=True):
                self.round.decode_add_(self.codec, j, p[k], mixed, alpha=w)
            out.append(mixed.sub_(sent))
        return out[0], out[1]


class BEERTracking(_TwoChannels):
    """BEER's two compressed channels with public copies (arXiv:2201.13320, Alg. 1).

    State: H_i, s^H_i (model channel), G_i, s^G_i (tracker channel). H starts at the common
    initial model (every node knows it: it was broadcast), so s^H = H; G and s^G start at 0.
    :meth:`exchange` sends ``C(x − H)`` and ``C(y − G)``, updates the copies and returns the
    corrections ``(γ (s^H − H), γ (s^G − G))``. The model channel of round t on rank r uses
    the seed ``round_seed(seed, r, 2t)``, the tracker channel ``round_seed(seed, r, 2t + 1)``.
    """

    def __init__(self, comm: Communicator, W_row, compressor: Compressor, gamma: float,
                 seed: int = 0) -> None:
        self.round = NeighbourRound(comm, W_row)
        if is_stateful(compressor):
            raise GossipError(f"BEER needs a stateless compressor, got {compressor.spec} "
                              "(it learns per node); use sign, topk, qsgd, ...")
        self.codec = compressor
        self.gamma = check_gamma(gamma)
        self.seed = int(seed)
        self.step = 0
        self.copies: dict[str, torch.Tensor] = {}

    def init(self, x: torch.Tensor) -> None:
        zero = torch.zeros_like(x)
        self.copies = {"H": x.detach().clone(), "sH": x.detach().clone(),
                       "G": zero, "sG": zero.clone()}

    def exchange(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.copies:
            raise GossipError("BEERTracking: call init(x) with the starting model first")
        c = self.copies
        rank = self.comm.rank
        first = self.codec.encode(x - c["H"], round_seed(self.seed, rank, 2 * self.step))
        second = self.codec.encode(y - c["G"], round_seed(self.seed, rank, 2 * self.step + 1))
        parts = self._exchange(first, second, x.numel())
        out = []
        for k, (own, mixed) in enumerate((("H", "sH"), ("G", "sG"))):
            copy, total = c[own].view(-1), c[mixed].view(-1)
            self.codec.decode_add_(parts[0][k], copy)
            self.codec.decode_add_(parts[0][k], total, alpha=self.w_self)
            for j, w, p in zip(self.comm.neighbors, self.w_neighbors, parts[1:], strict=True):
                self.round.decode_add_(self.codec, j, p[k], total, alpha=w)
            out.append((c[mixed] - c[own]).mul_(self.gamma))
        self.step += 1
        return out[0], out[1]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "step": self.step,
                **{k: v.clone() for k, v in self.copies.items()}}

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.step = int(sd["step"])
        self.copies = {k: sd[k].clone() for k in ("H", "sH", "G", "sG")}


class TrackingSGD(_Wrapped):
    """A torch optimizer stepping along a gradient tracker, mixed by ``mixer`` every step.

    One :meth:`step` at x (gradients of the local loss at x in ``p.grad``)::

        y ← g(x)                          first step
        y ← y + c_y + g(x) − g(x_prev)    later steps (c_y: the previous round's correction)
        (c_x, c_y) = mixer.exchange(x, y)
        p.grad ← y ;  optimizer.step()    x ← x − η d(y)   (momentum, weight decay: local)
        x ← x + c_x

    Parameters
    ----------
    optimizer
        Any ``torch.optim.Optimizer`` over the model's parameters.
    mixer
        :class:`ExactTracking` (gradient tracking) or :class:`BEERTracking` (BEER).
    momentum_mode
        ``"local"`` or ``"quasi-global"`` (:mod:`choco.qgm`; the displacement includes
        the consensus correction).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, mixer: ExactTracking | BEERTracking,
                 *, momentum_mode: str = "local") -> None:
        super().__init__(optimizer)
        self.gossip = mixer
        x = self.flat.buffer
        with torch.no_grad():
            mixer.init(x)
        self.y: torch.Tensor | None = None  # the tracker y (None before the first step)
        self.g_prev = torch.zeros_like(x)
        self.c_y = torch.zeros_like(x)
        self.qgm = (QuasiGlobalMomentum(optimizer, self.flat)
                    if check_momentum_mode(momentum_mode) == "quasi-global" else None)

    @property
    def bytes_sent(self) -> int:
        """Payload bytes this node has put on the wire (both channels)."""
        return self.gossip.bytes_sent

    @torch.no_grad()
    def _track(self, g: torch.Tensor) -> torch.Tensor:
        if self.y is None:
            self.y = g.clone()
        else:
            self.y.add_(self.c_y).add_(g).sub_(self.g_prev)
        self.g_prev.copy_(g)
        return self.y

    def step(self, closure=None):
        """Track, exchange, local step along the tracker, consensus correction."""
        loss = closure() if closure is not None else None
        y = self._track(self.flat.grad_buffer())
        with torch.no_grad():
            c_x, c_y = self.gossip.exchange(self.flat.buffer, y)
            self.c_y.copy_(c_y)
        self.flat.set_grads(y)
        if self.qgm is not None:
            self.qgm.before_step()
        self.optimizer.step()
        with torch.no_grad():
            self.flat.buffer.add_(c_x)
        if self.qgm is not None:
            self.qgm.after_step()
        self.local_steps += 1
        return loss

    def skip_step(self) -> None:
        """No local step (a stopped node), but the exchange the neighbours wait for."""
        with torch.no_grad():
            if self.y is None:
                self.y = torch.zeros_like(self.flat.buffer)
            y = self.y.add_(self.c_y)  # the gradient term is left out: no new gradient
            c_x, c_y = self.gossip.exchange(self.flat.buffer, y)
            self.c_y.copy_(c_y)
            self.flat.buffer.add_(c_x)
        self.local_steps += 1

    def progress(self) -> None:
        pass

    def progress_hooks(self) -> list:
        return []

    def flush(self) -> None:
        pass

    def state_dict(self) -> dict:
        """Optimizer, mixer (public copies, bytes, round), tracker and last gradient."""
        sd = {"optimizer": self.optimizer.state_dict(), "gossip": self.gossip.state_dict(),
              "local_steps": self.local_steps, "g_prev": self.g_prev.clone(),
              "c_y": self.c_y.clone()}
        if self.y is not None:
            sd["y"] = self.y.clone()
        if self.qgm is not None:
            sd["qgm"] = self.qgm.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.optimizer.load_state_dict(sd["optimizer"])
        self.gossip.load_state_dict(sd["gossip"])
        self.local_steps = int(sd["local_steps"])
        self.g_prev = sd["g_prev"].clone()
        self.c_y = sd["c_y"].clone()
        self.y = sd["y"].clone() if "y" in sd else None
        if ("qgm" in sd) != (self.qgm is not None):
            raise GossipError("the checkpoint and this optimizer disagree on quasi-global "
                              "momentum; resume with the options the run was started with.")
        if self.qgm is not None:
            self.qgm.load_state_dict(sd["qgm"])

"""One node's ``lgc`` state: the autoencoder, its training, the switch and the counts.

The per-node half of :mod:`choco.compress.lgc` (arXiv:2103.08870, adapted): made by
:meth:`choco.compress.lgc.LGC.new_state`, owned and driven by the gossip round through the
protocol of :mod:`choco.compress.stateful` (``observe`` after every message this node sends:
one Adam step in the warm-up, a count afterwards; the switch when ``sync_due``: node 0's
weights adopted by every node, then frozen).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import nn

from .base import CompressionError
from .stateful import CodingState, digest

if TYPE_CHECKING:
    from .lgc import LGC

__all__ = ["CHANNELS", "LEARNING_RATE", "LGCState"]

#: hidden channels of the autoencoder's convolutions
CHANNELS = 8
#: Adam learning rate of the warm-up training
LEARNING_RATE = 3e-3

_Model = TypeVar("_Model", bound=nn.Module)


def _init_weights(model: _Model, seed: int) -> _Model:
    """Fill ``model`` (built on the meta device) from a private generator: uniform in
    ``±1/sqrt(fan_in)`` like torch's default, without touching the global RNG (node
    threads of the in-process backend share it)."""
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
                fan_in = m.weight.shape[1] * m.weight.shape[2]
                if isinstance(m, nn.ConvTranspose1d):
                    fan_in = m.weight.shape[0] * m.weight.shape[2]
                bound = 1.0 / math.sqrt(fan_in)
                for p in (m.weight, m.bias):
                    if p is None:  # every layer is built with bias=True; nothing to draw
                        continue
                    p.copy_(torch.rand(p.shape, generator=gen) * (2 * bound) - bound)
    return model


class _AutoEncoder(nn.Module):
    """1-D convolutional autoencoder: ``log2 F`` stride-2 stages down, the same up."""

    encoder: nn.Sequential
    decoder: nn.Sequential

    def __init__(self, levels: int, channels: int = CHANNELS) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        c = 1
        for _ in range(levels):
            enc += [nn.Conv1d(c, channels, 3, stride=2, padding=1, device="meta"),
                    nn.Tanh()]
            c = channels
        enc += [nn.Conv1d(c, 1, 3, padding=1, device="meta")]
        dec: list[nn.Module] = [nn.Conv1d(1, channels, 3, padding=1, device="meta"), nn.Tanh()]
        for _ in range(levels):
            dec += [nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1,
                                       device="meta"), nn.Tanh()]
        dec += [nn.Conv1d(channels, 1, 3, padding=1, device="meta")]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)


class LGCState(CodingState):
    """One node's ``lgc`` state: the autoencoder, its Adam state, the round counter, the
    switch (``frozen``) and the message counts. Made by :meth:`LGC.new_state`; the gossip
    drives it (:meth:`observe` after every message, the switch when :meth:`sync_due`)."""

    def __init__(self, codec: LGC) -> None:
        self.codec = codec
        self.model = _init_weights(_AutoEncoder(int(math.log2(codec.latent))), codec.seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        #: rounds encoded so far; the switch happens before round ``warmup``
        self.rounds = 0
        self.frozen = False
        #: learned messages sent, rounds that fell back to top-k' after the switch
        self.learned = 0
        self.fallbacks = 0
        #: bytes this node sent to share the autoencoder (node 0: ``(n − 1) · 4P``)
        self.sync_bytes = 0
        #: mean squared error of the last warm-up training step (on normalized values)
        self.train_loss = float("nan")

    # ------------------------------------------------------------------ the weights
    def parameters_nbytes(self) -> int:
        """Bytes of the autoencoder's weights (fp32), what the switch broadcasts."""
        return 4 * sum(p.numel() for p in self.model.parameters())

    def weights(self) -> np.ndarray:
        """Every weight of the autoencoder, flat (fp32)."""
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).numpy()

    def digest(self) -> str:
        """SHA-256 of :meth:`weights` (what the nodes compare after the switch)."""
        return digest(self.weights())

    def load_weights(self, flat: np.ndarray) -> None:
        """Set every weight from a flat array laid out like :meth:`weights`."""
        flat_t = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        pos = 0
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(flat_t[pos : pos + p.numel()].view_as(p))
                pos += p.numel()

    # ------------------------------------------------------------------ learning
    def train_step(self, x: torch.Tensor) -> float:
        """One Adam step of the autoencoder on ``x``'s normalized sorted top-k curve."""
        _, y, _ = self.codec._curve(x.detach().to("cpu"))
        inp = y.view(1, 1, -1)
        with torch.enable_grad():
            self.optimizer.zero_grad(set_to_none=True)
            out = self.model.decoder(self.model.encoder(inp))
            loss = torch.nn.functional.mse_loss(out, inp)
            loss.backward()
            self.optimizer.step()
        self.train_loss = float(loss.detach())
        return self.train_loss

    def observe(self, x: torch.Tensor, flags: int) -> None:
        """After this node sent the message for ``x``: one training step in the warm-up,
        else count it as learned (``flags == 1``) or as a fallback."""
        self.rounds += 1
        if not self.frozen:
            self.train_step(x)
        elif flags == 1:
            self.learned += 1
        else:
            self.fallbacks += 1

    def fit_alone(self, x: torch.Tensor) -> None:
        """One node, no network: the ``warmup`` training steps on ``x``, then the switch
        with itself (frozen)."""
        self.fit(x, self.codec.warmup)

    def fit(self, x: torch.Tensor, steps: int) -> None:
        """Train ``steps`` warm-up steps on ``x`` alone, then freeze (one node, no network)."""
        for _ in range(steps):
            self.train_step(x)
        self.adopt(self.weights(), 0, 1)
        self.rounds = max(self.rounds, self.codec.warmup)

    # ------------------------------------------------------------------ the switch
    def sync_due(self) -> bool:
        """Whether the next round is the switch (every node must run the sync first)."""
        return not self.frozen and self.rounds >= self.codec.warmup

    def share(self) -> np.ndarray:
        return self.weights()

    def adopt(self, shared: np.ndarray, rank: int, size: int) -> None:
        """Load node 0's weights and freeze; node 0 counts their broadcast to the others."""
        self.load_weights(shared)
        self.frozen = True
        self.model.eval()
        self.sync_bytes += self.parameters_nbytes() * (size - 1) if rank == 0 else 0

    def counters(self) -> dict[str, int]:
        return {"learned": self.learned, "fallbacks": self.fallbacks}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "rounds": self.rounds,
                "frozen": self.frozen, "learned": self.learned, "fallbacks": self.fallbacks,
                "sync_bytes": self.sync_bytes, "spec": self.codec.spec}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("spec") != self.codec.spec:
            raise CompressionError(f"the saved lgc state is for {sd.get('spec')!r}, this run "
                                   f"uses {self.codec.spec!r}; resume with the same "
                                   "--compressor.")
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.rounds, self.frozen = int(sd["rounds"]), bool(sd["frozen"])
        self.learned, self.fallbacks = int(sd["learned"]), int(sd["fallbacks"])
        self.sync_bytes = int(sd["sync_bytes"])
        self.model.train(not self.frozen)

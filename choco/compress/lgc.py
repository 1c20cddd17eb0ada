"""``lgc[:options]``: Learned Gradient Compression adapted to CHOCO-Gossip.

After Abrahamyan et al., *Learned Gradient Compression for Distributed Deep Learning*
(arXiv:2103.08870): a small 1-D convolutional autoencoder compresses the values a top-k
selection keeps; the positions travel beside the code. This module is an **adaptation** for
decentralized gossip, not the paper's algorithm:

* **What is compressed.** The message vector ``v = x − x̂`` (CHOCO's residual). Its
  ``k = max(1, ceil(R d))`` largest-magnitude entries ``v_S`` are sorted by value
  (descending) and normalized by their RMS ``σ``; the autoencoder codes that sorted curve
  ``y = sort(v_S)/σ`` (padded with zeros to a multiple of the latent factor ``F``) into
  ``ceil(k/F)`` fp16 numbers. The positions are sent in the same sorted order (int32).
* **Least-squares scale.** The decoded curve ``ŷ`` is rescaled like ``scaled(...)`` does,
  ``c = σ α*`` with ``α* = <ŷ, y> / ||ŷ||²``, so the value part of the error is
  ``||v_S||² (1 − cos²(ŷ, y))``. The sender computes ``Q(v) = c ŷ`` on ``S`` exactly as a
  receiver will (from the fp16 code it sends).
* **Contraction floor.** A learned code has no contraction guarantee. The sender measures
  ``e = ||Q(v) − v||² / ||v||²`` and sends the learned message only if ``e <= floor``
  (so every learned message has ``δ >= 1 − floor``); otherwise it **falls back** to a plain
  top-``k'`` message, ``k'`` the most entries (int32 position + fp32 value) that fit the same
  message length, with ``δ >= k'/d``. Fallbacks are counted (:attr:`LGC.fallbacks`).
* **Phases.** For the first ``warmup`` rounds every node trains its own autoencoder online,
  one Adam step per round on the ``y`` of the vector it sends, and sends top-``k'``
  messages. At round ``warmup`` the nodes switch: node 0's autoencoder (encoder and
  decoder, ``P`` fp32 weights) is broadcast once to every node — ``(n − 1) · 4P`` bytes,
  counted in node 0's ``bytes_sent`` — every node checks that all nodes now hold the same
  weights (a digest compared across nodes, :class:`~choco.errors.AgreementError`
  otherwise), and the autoencoder is frozen. One shared decoder serves every sender.
* **Fixed length.** Every message (warm-up, learned or fallback) has the same length
  ``16 + 4 + 4k + 2 ceil(k/F)`` bytes, so exchanges keep fixed-size buffers; header flag 1
  marks a learned message, 0 a top-``k'`` one.

``δ`` (documented worst case): ``min(1 − floor, k'/d)``. The default ``floor = 1 − R/2``
keeps ``δ >= R/2``, half the top-k guarantee it replaces.

The compressor is stateful (weights, optimizer, round counter): each node needs its own
instance (:meth:`LGC.for_node`, done by :class:`~choco.gossip.ChocoGossip`), and the state
goes into checkpoints (:meth:`LGC.state_dict`). It compresses one flat vector (the run layer
does not wrap it per tensor).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import AgreementError
from .base import CompressionError, Compressor, check_finite, from_bytes, ratio_count, to_bytes
from .topk import topk_indices

#: option name -> (default, meaning); ``floor`` defaults to ``1 − ratio/2``
DEFAULTS: dict[str, float] = {"warmup": 50, "latent": 4, "ratio": 0.01}
#: hidden channels of the autoencoder's convolutions
CHANNELS = 8
#: Adam learning rate of the warm-up training
LEARNING_RATE = 3e-3


def _init_weights(model: nn.Module, seed: int) -> nn.Module:
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
                    p.copy_(torch.rand(p.shape, generator=gen) * (2 * bound) - bound)
    return model


class _AutoEncoder(nn.Module):
    """1-D convolutional autoencoder: ``log2 F`` stride-2 stages down, the same up."""

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


class LGC(Compressor):
    """Learned compression of the top-k values with an LS scale and a top-k' fallback.

    Parameters
    ----------
    ratio
        Top-k ratio ``R``: ``k = max(1, ceil(R d))`` values are selected.
    latent
        Latent factor ``F`` (a power of two >= 2): ``k`` values become ``ceil(k/F)`` fp16s.
    warmup
        Rounds of online training (and top-``k'`` messages) before the switch.
    floor
        Largest accepted ``||Q(v) − v||² / ||v||²`` of a learned message (default
        ``1 − R/2``); above it the round falls back to top-``k'``.
    seed
        Seed of the autoencoder's initial weights (the same on every node).
    """

    codec_id = 11

    def __init__(self, ratio: float = 0.01, latent: int = 4, warmup: int = 50,
                 floor: float | None = None, seed: int = 0) -> None:
        if not 0.0 < ratio <= 1.0:
            raise CompressionError(f"lgc needs ratio in (0, 1], got ratio={ratio}; write e.g. "
                                   "lgc:ratio=0.01")
        if latent < 2 or latent & (latent - 1):
            raise CompressionError(f"lgc needs latent, the latent factor, a power of two >= 2, "
                                   f"got latent={latent}; write e.g. lgc:latent=4")
        if warmup < 0:
            raise CompressionError(f"lgc needs warmup >= 0 rounds, got warmup={warmup}; write "
                                   "e.g. lgc:warmup=50")
        floor = 1.0 - ratio / 2 if floor is None else float(floor)
        if not 0.0 < floor < 1.0:
            raise CompressionError(f"lgc needs floor in (0, 1), the largest accepted relative "
                                   f"error of a learned message, got floor={floor}; write e.g. "
                                   "lgc:floor=0.995")
        self.ratio, self.latent, self.warmup, self.floor = float(ratio), int(latent), \
            int(warmup), floor
        self.seed = int(seed)
        self.spec = (f"lgc:ratio={self.ratio:g}:latent={self.latent}:warmup={self.warmup}"
                     f":floor={self.floor:g}")
        self._new_state()

    # ------------------------------------------------------------------ per-node state
    def _new_state(self) -> None:
        self.model = _init_weights(_AutoEncoder(int(math.log2(self.latent))), self.seed)
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

    def for_node(self) -> LGC:
        """A fresh instance with this one's options (each node trains its own first)."""
        return LGC(self.ratio, self.latent, self.warmup, self.floor, self.seed)

    def parameters_nbytes(self) -> int:
        """Bytes of the autoencoder's weights (fp32), what the switch broadcasts."""
        return 4 * sum(p.numel() for p in self.model.parameters())

    def weights(self) -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).numpy()

    def digest(self) -> str:
        return hashlib.sha256(self.weights().tobytes()).hexdigest()

    def _load_weights(self, flat: np.ndarray) -> None:
        flat_t = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        pos = 0
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(flat_t[pos : pos + p.numel()].view_as(p))
                pos += p.numel()

    def wants_sync(self) -> bool:
        """Whether the next round is the switch (the collective :meth:`sync` must run)."""
        return not self.frozen and self.rounds >= self.warmup

    def sync(self, comm: Any) -> None:
        """The switch, a collective on every node: node 0's weights to all, checked, frozen.

        ``comm`` is any :class:`~choco.comm.Communicator` (``broadcast``,
        ``allgather_object``, ``rank``, ``size``).
        """
        shared = comm.broadcast(self.weights(), root=0)
        self._freeze(shared, comm.rank, comm.size)
        digests = comm.allgather_object(self.digest())
        check_same_weights(digests)

    def sync_in_process(self, nodes: list[Compressor]) -> None:
        """The switch for the instances of all nodes, in rank order, in one thread: node 0's
        weights copied to every node, checked, frozen."""
        learned = [q for q in nodes if isinstance(q, LGC)]
        shared = learned[0].weights().copy()
        for rank, q in enumerate(learned):
            q._freeze(shared, rank, len(learned))
        check_same_weights([q.digest() for q in learned])

    def _freeze(self, shared: np.ndarray, rank: int, size: int) -> None:
        self._load_weights(shared)
        self.frozen = True
        self.model.eval()
        self.sync_bytes += self.parameters_nbytes() * (size - 1) if rank == 0 else 0

    def state_dict(self) -> dict:
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "rounds": self.rounds,
                "frozen": self.frozen, "learned": self.learned, "fallbacks": self.fallbacks,
                "sync_bytes": self.sync_bytes, "spec": self.spec}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("spec") != self.spec:
            raise CompressionError(f"the saved lgc state is for {sd.get('spec')!r}, this run "
                                   f"uses {self.spec!r}; resume with the same --compressor.")
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.rounds, self.frozen = int(sd["rounds"]), bool(sd["frozen"])
        self.learned, self.fallbacks = int(sd["learned"]), int(sd["fallbacks"])
        self.sync_bytes = int(sd["sync_bytes"])
        self.model.train(not self.frozen)

    # ------------------------------------------------------------------ sizes
    def k(self, numel: int) -> int:
        return ratio_count(self.ratio, numel)

    def code_len(self, numel: int) -> int:
        """fp16 numbers in the code: ``ceil(k / F)``."""
        return -(-self.k(numel) // self.latent)

    def payload_nbytes(self, numel: int) -> int:
        return 4 + 4 * self.k(numel) + 2 * self.code_len(numel)

    def fallback_k(self, numel: int) -> int:
        """``k'``: the entries of a top-``k'`` message that fit the fixed length (>= 1)."""
        return min(numel, max(1, self.payload_nbytes(numel) // 8))

    def delta(self, numel: int) -> float:
        return min(1.0 - self.floor, self.fallback_k(numel) / numel)

    # ------------------------------------------------------------------ the code
    def _curve(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(positions in value order, y padded to a multiple of F, σ)`` of ``x``'s top-k."""
        idx = topk_indices(x, self.k(x.numel()))
        values = x[idx].to(torch.float32)
        values, order = torch.sort(values, descending=True, stable=True)
        idx = idx[order]
        sigma = float(values.pow(2).mean().sqrt())
        y = values / sigma if sigma > 0 else values
        pad = self.code_len(x.numel()) * self.latent - y.numel()
        return idx, torch.nn.functional.pad(y, (0, pad)), sigma

    def _decode_curve(self, code: torch.Tensor, k: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model.decoder(code.float().view(1, 1, -1)).view(-1)[:k]

    def train_step(self, x: torch.Tensor) -> float:
        """One Adam step of the autoencoder on ``x``'s normalized sorted top-k curve."""
        _, y, _ = self._curve(x.detach().to("cpu"))
        inp = y.view(1, 1, -1)
        with torch.enable_grad():
            self.optimizer.zero_grad(set_to_none=True)
            out = self.model.decoder(self.model.encoder(inp))
            loss = torch.nn.functional.mse_loss(out, inp)
            loss.backward()
            self.optimizer.step()
        self.train_loss = float(loss.detach())
        return self.train_loss

    def fit(self, x: torch.Tensor, steps: int) -> None:
        """Train ``steps`` warm-up steps on ``x`` alone, then freeze (one node, no network)."""
        for _ in range(steps):
            self.train_step(x)
        self._freeze(self.weights(), 0, 1)
        self.rounds = max(self.rounds, self.warmup)

    def prepare_alone(self, x: torch.Tensor) -> None:
        """What ``python -m choco.compress`` and the benchmarks do with a single vector:
        :meth:`fit` for the warm-up's ``warmup`` steps."""
        self.fit(x.detach().cpu(), self.warmup)

    # ------------------------------------------------------------------ encode / decode
    def encode_payload(self, x: torch.Tensor, seed: int) -> tuple[int, torch.Tensor]:
        check_finite(x, self.spec)
        if self.wants_sync():
            raise CompressionError(
                f"{self.spec}: round {self.rounds} is the switch, but the autoencoder was not "
                "shared; run it through ChocoGossip (which calls sync) or call sync(comm) on "
                "every node first."
            )
        xc = x.detach().to("cpu")
        self.rounds += 1
        if not self.frozen:
            self.train_step(xc)
            return 0, self._fallback(xc)
        idx, y, sigma = self._curve(xc)
        k = idx.numel()
        with torch.no_grad():
            code = self.model.encoder(y.view(1, 1, -1)).view(-1).to(torch.float16)
        if not bool(torch.isfinite(code).all()):
            self.fallbacks += 1
            return 0, self._fallback(xc)
        y_hat = self._decode_curve(code, k).double()
        y_true = y[:k].double()
        norm = float(y_hat @ y_hat)
        alpha = float(y_hat @ y_true) / norm if norm > 0 else 0.0
        scale = torch.tensor([sigma * alpha], dtype=torch.float32)
        values = scale.double() * y_hat.float().double()  # what a receiver adds
        xs = xc.double()
        total = float(xs @ xs)
        kept = xs[idx]
        err = total - float(kept @ kept) + float((kept - values).pow(2).sum())
        if total == 0.0 or not math.isfinite(err) or err > self.floor * total:
            self.fallbacks += 1
            return 0, self._fallback(xc)
        self.learned += 1
        return 1, torch.cat([to_bytes(scale), to_bytes(idx.to(torch.int32)), to_bytes(code)])

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        numel = x.numel()
        kf = self.fallback_k(numel)
        idx = topk_indices(x, kf)
        out = torch.zeros(self.payload_nbytes(numel), dtype=torch.uint8)
        body = torch.cat([to_bytes(idx.to(torch.int32)), to_bytes(x[idx].to(torch.float32))])
        out[: body.numel()] = body
        return out

    def decode_payload_add_(self, payload, flags, seed, out, alpha):
        numel = out.numel()
        if flags == 0:
            kf = self.fallback_k(numel)
            idx = from_bytes(payload[: 4 * kf], torch.int32, out.device).long()
            values = from_bytes(payload[4 * kf : 8 * kf], torch.float32, out.device)
        elif flags == 1:
            if not self.frozen:
                raise CompressionError(
                    f"{self.spec}: a learned message arrived before this node's switch; "
                    "every node must use the same warmup (start them with the same options)."
                )
            k = self.k(numel)
            scale = from_bytes(payload[:4], torch.float32, torch.device("cpu"))
            idx = from_bytes(payload[4 : 4 + 4 * k], torch.int32, out.device).long()
            code = from_bytes(payload[4 + 4 * k :], torch.float16, torch.device("cpu"))
            values = (scale.double() * self._decode_curve(code, k).double()).to(out.device)
        else:
            raise CompressionError(f"{self.spec}: unknown message kind {flags}; corrupt buffer")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise CompressionError(f"{self.spec}: positions out of range; corrupt buffer")
        out.index_add_(0, idx, values.to(out.dtype), alpha=alpha)


def check_same_weights(digests: list[str]) -> None:
    """Raise :class:`AgreementError` unless every node's autoencoder digest is the same."""
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise AgreementError(
            f"lgc: after the switch every node must hold node 0's autoencoder, but ranks "
            f"{differ} hold other weights; the broadcast was corrupted or ranks run different "
            "versions of choco."
        )


def sync_in_process(compressors: list[LGC]) -> None:
    """The switch for nodes driven from one thread (:func:`choco.gossip.lockstep`): what
    :meth:`LGC.sync` does, with node 0's weights copied instead of broadcast."""
    compressors[0].sync_in_process(compressors)

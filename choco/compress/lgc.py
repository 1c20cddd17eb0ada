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

The codec is pure: :class:`LGC` holds the options, and everything a node learns or keeps
(weights, optimizer, round counter, the switch, message counts) is its :class:`LGCState`,
made by :meth:`LGC.new_state` and owned, driven and checkpointed by the gossip round
(:mod:`choco.compress.stateful`). Without a state, :class:`LGC` codes like a node in its
warm-up (top-``k'`` messages). It compresses one flat vector (the run layer does not wrap
it per tensor).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .base import (
    CompressionError,
    Compressor,
    Reserved,
    check_finite,
    from_bytes,
    ratio_count,
    to_bytes,
)
from .lgc_state import CHANNELS, LEARNING_RATE, LGCState
from .stateful import CodingState, Stateful, check_agreement
from .topk import topk_indices

if TYPE_CHECKING:
    from .layout import Layout

__all__ = ["CHANNELS", "DEFAULTS", "LEARNING_RATE", "LGC", "LGCState", "check_same_weights"]

#: option name -> (default, meaning); ``floor`` defaults to ``1 − ratio/2``
DEFAULTS: dict[str, float] = {"warmup": 50, "latent": 4, "ratio": 0.01}


class LGC(Compressor, Stateful):
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

    def new_state(self) -> LGCState:
        """A node's fresh state: the autoencoder from :attr:`seed` (the same on every node),
        untrained, before the switch."""
        return LGCState(self)

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

    @staticmethod
    def _decode_curve(state: LGCState, code: torch.Tensor, k: int) -> torch.Tensor:
        with torch.no_grad():
            return state.model.decoder(code.float().view(1, 1, -1)).view(-1)[:k]

    # ------------------------------------------------------------------ encode / decode
    def _whole_vector(self, layout: Layout | None) -> None:
        if layout is not None:
            raise CompressionError(
                f"lgc learns one code for a whole vector and cannot code segments, got a "
                f"layout of {len(layout.sizes)} segments; compress the flat vector"
            )

    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        """Without a node's state: the warm-up's top-``k'`` message."""
        self._whole_vector(layout)
        check_finite(x, self.spec)
        return 0, self._fallback(x.detach().to("cpu"))

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float, layout: Layout | None = None) -> None:
        """Without a node's state: top-``k'`` messages only."""
        self._whole_vector(layout)
        self._decode(None, payload, flags, out, alpha)

    def encode_payload_with(self, state: CodingState, x: torch.Tensor,
                            seed: int) -> tuple[int, torch.Tensor]:
        """The message for ``x`` from ``state``'s autoencoder (read, never changed)."""
        st = self._own(state)
        check_finite(x, self.spec)
        if st.sync_due():
            raise CompressionError(
                f"{self.spec}: round {st.rounds} is the switch, but the autoencoder was not "
                "shared; run it through ChocoGossip (which runs the switch) or "
                "choco.compress.stateful.sync on every node first."
            )
        xc = x.detach().to("cpu")
        if not st.frozen:
            return 0, self._fallback(xc)
        idx, y, sigma = self._curve(xc)
        k = idx.numel()
        with torch.no_grad():
            code = st.model.encoder(y.view(1, 1, -1)).view(-1).to(torch.float16)
        if not bool(torch.isfinite(code).all()):
            return 0, self._fallback(xc)
        y_hat = self._decode_curve(st, code, k).double()
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
            return 0, self._fallback(xc)
        return 1, torch.cat([to_bytes(scale), to_bytes(idx.to(torch.int32)), to_bytes(code)])

    def decode_payload_add_with(self, state: CodingState, payload: torch.Tensor, flags: int,
                                seed: int, out: torch.Tensor, alpha: float) -> None:
        self._decode(self._own(state), payload, flags, out, alpha)

    def _own(self, state: CodingState) -> LGCState:
        if not isinstance(state, LGCState) or state.codec.spec != self.spec:
            raise CompressionError(f"{self.spec} codes with its own LGCState (from "
                                   f"new_state()), got {state!r}")
        return state

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        numel = x.numel()
        kf = self.fallback_k(numel)
        idx = topk_indices(x, kf)
        out = torch.zeros(self.payload_nbytes(numel), dtype=torch.uint8)
        body = torch.cat([to_bytes(idx.to(torch.int32)), to_bytes(x[idx].to(torch.float32))])
        out[: body.numel()] = body
        return out

    def _decode(self, state: LGCState | None, payload: torch.Tensor, flags: int,
                out: torch.Tensor, alpha: float) -> None:
        numel = out.numel()
        if flags == 0:
            kf = self.fallback_k(numel)
            idx = from_bytes(payload[: 4 * kf], torch.int32, out.device).long()
            values = from_bytes(payload[4 * kf : 8 * kf], torch.float32, out.device)
        elif flags == 1:
            if state is None or not state.frozen:
                raise CompressionError(
                    f"{self.spec}: a learned message arrived before this node's switch; "
                    "every node must use the same warmup (start them with the same options)."
                )
            k = self.k(numel)
            scale = from_bytes(payload[:4], torch.float32, torch.device("cpu"))
            idx = from_bytes(payload[4 : 4 + 4 * k], torch.int32, out.device).long()
            code = from_bytes(payload[4 + 4 * k :], torch.float16, torch.device("cpu"))
            curve = self._decode_curve(state, code, k).double()
            values = (scale.double() * curve).to(out.device)
        else:
            raise CompressionError(f"{self.spec}: unknown message kind {flags}; corrupt buffer")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise CompressionError(f"{self.spec}: positions out of range; corrupt buffer")
        out.index_add_(0, idx, values.to(out.dtype), alpha=alpha)


def check_same_weights(digests: list[str]) -> None:
    """Raise :class:`~choco.errors.AgreementError` unless every node's autoencoder digest
    is the same."""
    check_agreement(digests, "lgc")

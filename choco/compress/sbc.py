"""``sbc:R``: Sparse Binary Compression (Sattler et al., arXiv:1805.08768) as a CHOCO ``Q``.

Per vector (per tensor under :class:`~choco.compress.PerTensor`) with ``k = max(1, ceil(R d))``:
take the ``k`` largest positive entries ``S⁺`` and the ``k`` most negative ones ``S⁻``, with
means ``μ⁺ = (1/k) Σ_{S⁺} x_i`` and ``μ⁻ = (1/k) Σ_{S⁻} x_i``; keep the side whose mean has
the larger magnitude (``S⁺`` on a tie) and send one fp32 value ``μ`` and that side's ``k``
positions::

    Q(x) = μ · 1_S,      S ∈ {S⁺, S⁻},   μ = (1/k) Σ_{i ∈ S} x_i.

``μ`` is the least-squares scale of ``1_S``, so ``||Q(x) − x||² = ||x||² − k μ²``: ``Q`` is
δ-contractive with ``δ(x) = k μ² / ||x||²``. The worst case is ``δ >= 1/(4d)`` (documented
in docs/compressors.md; about 0.07 at R = 1% on Gaussian vectors, measured by
``python -m choco.bench delta``). When fewer than ``k`` entries have the kept sign, the
selection is completed with zeros (they add nothing to ``μ``'s sum; ``μ`` stays the LS scale).

Wire: ``μ`` (fp32), then the ``k`` ascending positions as Golomb-Rice coded gaps with SBC's
parameter ``b* = 1 + floor(log2(ln(φ − 1) / ln(1 − p)))`` for ``p = R`` (φ the golden ratio;
:func:`choco.wire.rice_parameter`), in a fixed-size buffer (``k (b* + 1) + floor((d − k) /
2^b*)`` bits; about 8.1 bits per position at ``p = 1%``). Decoding is exact.

SBC's own residual accumulation is not added: CHOCO's ``x − x̂`` already is that residual
(what a message leaves out is sent later), and SBC's communication delay is
``choco-train --gossip-every K`` (docs/compressors.md, "SBC").
"""

from __future__ import annotations

import torch

from ..wire import rice_decode, rice_encode, rice_nbytes, rice_parameter
from ..wire.framing import Reserved
from .base import CompressionError, Compressor, check_finite, from_bytes, ratio_count, to_bytes
from .layout import Layout, decode_each, encode_each
from .selection import topk_indices


class SBC(Compressor):
    """Sparse Binary Compression: one signed mean on the top-``R`` entries of one sign."""

    codec_id = 10

    def __init__(self, ratio: float) -> None:
        if not 0.0 < ratio <= 1.0:
            raise CompressionError(f"sbc needs a ratio R in (0, 1], got {ratio}; write e.g. "
                                   "sbc:0.01")
        self.ratio = float(ratio)
        self.spec = f"sbc:{ratio:g}"

    def k(self, numel: int) -> int:
        return ratio_count(self.ratio, numel)

    def rice_b(self, numel: int) -> int:
        return rice_parameter(min(self.ratio, self.k(numel) / numel))

    def payload_nbytes(self, numel: int) -> int:
        return 4 + rice_nbytes(self.k(numel), numel, self.rice_b(numel))

    def delta(self, numel: int) -> float:
        return 1.0 / (4 * numel)

    def select(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(μ, ascending positions)`` of the kept side."""
        k = self.k(x.numel())
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        sides = []
        for signed in (x, -x):
            idx = topk_indices(signed.clamp(min=0), k)
            sides.append((float(x[idx].sum(dtype=acc)) / k, idx))
        (mu_pos, pos), (mu_neg, neg) = sides
        return (mu_pos, pos) if abs(mu_pos) >= abs(mu_neg) else (mu_neg, neg)

    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        if layout is not None:
            return encode_each(self, x, seed, layout)
        check_finite(x, self.spec)
        mu, idx = self.select(x)
        value = torch.tensor([mu], dtype=torch.float32)
        coded = rice_encode(idx.cpu().numpy(), x.numel(), self.rice_b(x.numel()))
        return 0, torch.cat([to_bytes(value), torch.from_numpy(coded)])

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if layout is not None:
            return decode_each(self, payload, flags, seed, out, alpha, layout)
        numel = out.numel()
        mu = float(from_bytes(payload[:4], torch.float32, torch.device("cpu")))
        try:
            idx = rice_decode(payload[4:].numpy(), self.k(numel), numel, self.rice_b(numel))
        except ValueError as exc:
            raise CompressionError(f"{self.spec}: {exc}; corrupt buffer") from None
        if mu != 0.0:
            index = torch.from_numpy(idx).to(out.device)
            out.index_add_(0, index, torch.full((index.numel(),), alpha * mu, dtype=out.dtype,
                                                device=out.device))

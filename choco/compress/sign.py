"""``sign``: scaled sign compression, 1 bit per element plus one fp32 scale.

.. math:: Q(x) = \\frac{\\|x\\|_1}{d}\\,\\operatorname{sign}(x), \\qquad \\operatorname{sign}(0) = +1,

with contraction ``δ(x) = ||x||_1^2 / (d ||x||_2^2) >= 1/d`` (arXiv:1907.09356, §5 and
Table 1 "sign+norm"; 2/π for Gaussian vectors). ``||x||_1 / d`` is the least-squares optimal
scale for the sign pattern, so the operator is contractive without further rescaling.

Wire: fp32 scale, then ``ceil(d/8)`` bytes of signs, LSB-first, bit 1 ⇔ negative.
"""

from __future__ import annotations

import torch

from ..wire import pack_bits, packed_nbytes, unpack_bits
from .base import Compressor, check_finite, from_bytes, to_bytes


class Sign(Compressor):
    """Scaled sign: ``(||x||_1/d) sign(x)``; ``δ >= 1/d`` (worst case), 2/π on N(0, 1)."""

    codec_id = 2

    def __init__(self) -> None:
        self.spec = "sign"

    def payload_nbytes(self, numel: int) -> int:
        return 4 + packed_nbytes(numel)

    def delta(self, numel: int) -> float:
        return 1.0 / numel

    def _encode(self, x: torch.Tensor, seed: int) -> tuple[int, torch.Tensor]:
        scale = x.abs().sum(dtype=torch.float32 if x.dtype != torch.float64 else None)
        scale = (scale / x.numel()).to(torch.float32)
        check_finite(scale, self.spec)
        bits = pack_bits(x < 0)
        return 0, torch.cat([to_bytes(scale.reshape(1)), bits])

    def _decode_add_(self, payload, flags, seed, out, alpha):
        scale = float(from_bytes(payload[:4], torch.float32, torch.device("cpu")))
        negative = unpack_bits(payload[4:], out.numel(), out.device)
        # sign(x) * scale = scale - 2*scale*[x < 0]
        values = torch.full_like(out, alpha * scale)
        values.masked_fill_(negative, -alpha * scale)
        out.add_(values)

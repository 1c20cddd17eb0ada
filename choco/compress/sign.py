"""``sign``: scaled sign compression, 1 bit per element plus one fp32 scale.

.. math:: Q(x) = \\frac{\\|x\\|_1}{d}\\,\\operatorname{sign}(x),
   \\qquad \\operatorname{sign}(0) = +1,

with contraction ``δ(x) = ||x||_1^2 / (d ||x||_2^2) >= 1/d`` (arXiv:1907.09356, §5 and
Table 1 "sign+norm"; 2/π for Gaussian vectors). ``||x||_1 / d`` is the least-squares optimal
scale for the sign pattern, so the operator is contractive without further rescaling.

Wire: fp32 scale, then ``ceil(d/8)`` bytes of signs, LSB-first, bit 1 ⇔ negative.
"""

from __future__ import annotations

import numpy as np
import torch

from ..wire import pack_bits, packed_nbytes, unpack_bits
from . import _host
from .base import Compressor, Reserved, check_finite, from_bytes, to_bytes


class Sign(Compressor):
    """Scaled sign: ``(||x||_1/d) sign(x)``; ``δ >= 1/d`` (worst case), 2/π on N(0, 1)."""

    codec_id = 2

    def __init__(self) -> None:
        self.spec = "sign"

    def payload_nbytes(self, numel: int) -> int:
        return 4 + packed_nbytes(numel)

    def delta(self, numel: int) -> float:
        return 1.0 / numel

    def encode_payload(self, x: torch.Tensor, seed: int) -> tuple[int, torch.Tensor]:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        l1 = torch.linalg.vector_norm(x, ord=1, dtype=acc)
        scale = (l1 / x.numel()).to(torch.float32).reshape(1)
        check_finite(scale, self.spec)
        if not _host.use_host_kernels(x):
            return 0, torch.cat([to_bytes(scale), pack_bits(x < 0)])
        xn = x.detach().numpy()
        message = Reserved(4 + packed_nbytes(xn.size))
        payload = message.payload
        payload[:4] = to_bytes(scale).numpy()
        for start, stop in _host.chunks(xn.size):
            packed = np.packbits(xn[start:stop] < 0, bitorder="little")
            payload[4 + start // 8 : 4 + start // 8 + packed.size] = packed
        return 0, message

    def decode_payload_add_(self, payload, flags, seed, out, alpha):
        scale = float(from_bytes(payload[:4], torch.float32, torch.device("cpu")))
        numel = out.numel()
        if _host.use_host_kernels(out):
            # out += fl(±scale · alpha) in out's precision: the bits of scale · alpha (one
            # product, as the elementwise one gives, since negation is exact) with the sign
            # bit set for the negatives, added in one pass
            signs, target = payload[4:].numpy(), out.detach().numpy()
            dtype = target.dtype
            uint = np.dtype(f"u{dtype.itemsize}")
            value = np.multiply(np.float32(scale), dtype.type(alpha), dtype=dtype).view(uint)
            word = np.empty(min(_host.CHUNK, numel), dtype=uint)
            for start, stop in _host.chunks(numel):
                w = word[: stop - start]
                neg = np.unpackbits(signs[start // 8 :], count=stop - start, bitorder="little")
                np.left_shift(neg, 8 * dtype.itemsize - 1, out=w, dtype=uint)
                w |= value
                np.add(target[start:stop], w.view(dtype), out=target[start:stop])
            return
        negative = unpack_bits(payload[4:], numel, out.device)
        # sign(x) * scale = scale - 2*scale*[x < 0]
        values = torch.full_like(out, alpha * scale)
        values.masked_fill_(negative, -alpha * scale)
        out.add_(values)

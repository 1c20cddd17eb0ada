"""``sign``: scaled sign compression, 1 bit per element plus one fp32 scale.

.. math:: Q(x) = \\frac{\\|x\\|_1}{d}\\,\\operatorname{sign}(x),
   \\qquad \\operatorname{sign}(0) = +1,

with contraction ``δ(x) = ||x||_1^2 / (d ||x||_2^2) >= 1/d`` (arXiv:1907.09356, §5 and
Table 1 "sign+norm"; 2/π for Gaussian vectors). ``||x||_1 / d`` is the least-squares optimal
scale for the sign pattern, so the operator is contractive without further rescaling.

Wire: fp32 scale, then ``ceil(d/8)`` bytes of signs, LSB-first, bit 1 ⇔ negative.

Host kernel (one for flat vectors and segment layouts, :mod:`choco.compress.layout`):
a flat vector and segments of at least ``BATCH_MAX`` elements are packed chunk by chunk;
the shorter segments of a layout in
blocks, whose scales are computed per segment with the same torch call (a batched reduction
could sum in another order and change the last bit) and whose signs are packed once for
the block, each segment's bytes cut out of that stream with a shift (its start bit mod 8).
"""

from __future__ import annotations

import numpy as np
import torch

from ..wire import pack_bits, packed_nbytes, unpack_bits
from ..wire.framing import Reserved
from . import _host
from .base import Compressor, check_finite, from_bytes, to_bytes
from .layout import (
    Alone,
    Block,
    Layout,
    decode_each,
    encode_each,
    flat,
    pack_sign_bits,
    plan_sign_bits,
    unpack_sign_bits,
)


def _l1_scale(x: torch.Tensor) -> torch.Tensor:
    """``||x||_1 / d`` as one fp32 (accumulated in fp64 for fp64 input)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (torch.linalg.vector_norm(x, ord=1, dtype=acc) / x.numel()).to(torch.float32)


def _prepare(block: Block) -> None:
    block.plan["size_list"] = block.sizes.tolist()
    block.plan["sizes"] = torch.from_numpy(block.sizes)
    block.plan["scale"] = (block.offsets[:, None] + np.arange(4)).reshape(-1)
    plan_sign_bits(block, block.offsets + 4)


class Sign(Compressor):
    """Scaled sign: ``(||x||_1/d) sign(x)``; ``δ >= 1/d`` (worst case), 2/π on N(0, 1)."""

    codec_id = 2

    def __init__(self) -> None:
        self.spec = "sign"

    def payload_nbytes(self, numel: int) -> int:
        return 4 + packed_nbytes(numel)

    def delta(self, numel: int) -> float:
        return 1.0 / numel

    # ------------------------------------------------------------------ encode
    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        if not _host.use_host_kernels(x):
            if layout is not None:
                return encode_each(self, x, seed, layout)
            scale = _l1_scale(x).reshape(1)
            check_finite(scale, self.spec)
            return 0, torch.cat([to_bytes(scale), pack_bits(x < 0)])
        layout = layout or flat(x.numel(), self.payload_nbytes(x.numel()))
        message = Reserved(layout.nbytes)
        payload = message.payload
        for item in layout.items(self.spec, None, _prepare):
            if isinstance(item, Block):
                self._encode_block(x[item.elem : item.elem + item.numel], item,
                                   payload[item.byte : item.stop])
            else:
                self._encode_alone(x[item.elem : item.elem + item.size],
                                   payload[item.byte : item.stop])
        return 0, message

    def _encode_alone(self, x: torch.Tensor, payload: np.ndarray) -> None:
        scale = _l1_scale(x).reshape(1)
        check_finite(scale, self.spec)
        payload[:4] = to_bytes(scale).numpy()
        xn = x.detach().numpy()
        for start, stop in _host.chunks(xn.size):
            packed = np.packbits(xn[start:stop] < 0, bitorder="little")
            payload[4 + start // 8 : 4 + start // 8 + packed.size] = packed

    def _encode_block(self, x: torch.Tensor, block: Block, payload: np.ndarray) -> None:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        l1 = torch.stack([torch.linalg.vector_norm(seg, ord=1, dtype=acc)
                          for seg in torch.split(x, block.plan["size_list"])])
        scales = (l1 / block.plan["sizes"].to(acc)).to(torch.float32)  # as _l1_scale, at once
        check_finite(scales, self.spec)
        payload[block.plan["scale"]] = scales.numpy().view(np.uint8)
        pack_sign_bits(x.detach().numpy() < 0, block.plan, payload)

    # ------------------------------------------------------------------ decode
    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if not _host.use_host_kernels(out):
            if layout is not None:
                return decode_each(self, payload, flags, seed, out, alpha, layout)
            scale = float(from_bytes(payload[:4], torch.float32, torch.device("cpu")))
            negative = unpack_bits(payload[4:], out.numel(), out.device)
            # sign(x) * scale = scale - 2*scale*[x < 0]
            values = torch.full_like(out, alpha * scale)
            values.masked_fill_(negative, -alpha * scale)
            out.add_(values)
            return None
        layout = layout or flat(out.numel(), self.payload_nbytes(out.numel()))
        data = payload.numpy()
        target = out.detach().numpy()
        for item in layout.items(self.spec, None, _prepare):
            if isinstance(item, Block):
                _decode_block(data[item.byte : item.stop], item,
                              target[item.elem : item.elem + item.numel], alpha)
            else:
                _decode_alone(data[item.byte : item.stop], item,
                              target[item.elem : item.elem + item.size], alpha)
        return None


def _word(scales: np.ndarray, dtype: np.dtype, alpha: float) -> tuple[np.ndarray, np.dtype]:
    """The bits of ``fl(scale · alpha)`` in the target's precision (one product, as the
    elementwise one gives, since negation is exact), and the unsigned type of that width."""
    uint = np.dtype(f"u{dtype.itemsize}")
    return np.multiply(scales, dtype.type(alpha), dtype=dtype).view(uint), uint


def _decode_alone(payload: np.ndarray, item: Alone, target: np.ndarray, alpha: float) -> None:
    """``out += ±fl(scale · alpha)``: the sign bit set for the negatives, chunk by chunk."""
    value, uint = _word(payload[:4].view(np.float32), target.dtype, alpha)
    signs = payload[4:]
    word = np.empty(min(_host.CHUNK, item.size), dtype=uint)
    for start, stop in _host.chunks(item.size):
        w = word[: stop - start]
        neg = np.unpackbits(signs[start // 8 :], count=stop - start, bitorder="little")
        np.left_shift(neg, 8 * target.dtype.itemsize - 1, out=w, dtype=uint)
        w |= value
        np.add(target[start:stop], w.view(target.dtype), out=target[start:stop])


def _decode_block(payload: np.ndarray, block: Block, target: np.ndarray, alpha: float) -> None:
    """What :func:`_decode_alone` adds, for every segment of the block in one pass."""
    value, uint = _word(payload[block.plan["scale"]].view(np.float32), target.dtype, alpha)
    bits = unpack_sign_bits(payload, block)
    w = np.left_shift(bits, 8 * target.dtype.itemsize - 1, dtype=uint)
    w ^= np.repeat(value, block.sizes)  # flip the sign bit of the negatives
    np.add(target, w.view(target.dtype), out=target)

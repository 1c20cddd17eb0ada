"""``natural``: natural compression ``C_nat`` (arXiv:1905.10988), 9 bits per element.

Each entry is rounded stochastically to one of the two powers of two around it,

.. math:: C_{nat}(x)_i = \\operatorname{sign}(x_i)\\, 2^{a + \\xi_i}, \\quad
   2^a \\le |x_i| < 2^{a+1}, \\quad
   \\xi_i \\sim \\operatorname{Bernoulli}\\!\\left(\\frac{|x_i|}{2^a} - 1\\right),

which is unbiased with ``E||C_nat(x) - x||^2 <= ω ||x||^2``, ``ω = 1/8`` (arXiv:1905.10988;
attained at ``|x_i| = (4/3) 2^a``). CHOCO needs a contraction, so ``natural`` sends
``Q = C_nat / (1 + ω) = (8/9) C_nat`` with ``δ = 1/(1 + ω) = 8/9`` (arXiv:1907.09356 §3);
``natural:raw`` sends ``C_nat`` itself (unbiased, ``δ = 1 - ω = 7/8``), for DCD/ECD-PSGD.

fp32 bit trick (``C_nat`` of arXiv:1905.10988 in integer arithmetic on the float32 bits): with
``bits`` the IEEE-754 pattern of ``|x_i|`` (exponent ``e``, mantissa ``m``) and ``u`` uniform
on ``[0, 2^23)``, ``e' = (bits + u) >> 23`` equals ``e + [m + u >= 2^23]``, i.e. ``e``
rounded up with probability ``m / 2^23``: exactly the unbiased rounding above. Zeros and
powers of two are exact, subnormals go to 0 or ``2^-126`` (unbiased); a non-finite input
or ``|x| >= 2^127`` (``e' = 255``) raises.
float16/float64 inputs are converted to float32 first (float64 rounds to nearest there).

Wire: ``ceil(d/8)`` bytes of signs (LSB-first, 1 ⇔ negative) then ``d`` exponent bytes
``e'``; decoding rebuilds ``(sign << 31) | (e' << 23)`` as float32.

Host kernel (one for flat vectors and segment layouts, :mod:`choco.compress.layout`): the
``u`` of a vector or segment are the first ``d`` uint32 of ``SFC64(seed)``'s raw stream
(segment ``l``: ``segment_seed(seed, l)``). A flat vector and segments of at least
``BATCH_MAX`` elements are coded chunk by chunk; the shorter segments of a layout in
blocks, where only the draws loop over the segments (one seeded generator each) and the
rounding, the range check, the sign packing, the exponent bytes and the decoded sum are
whole-block passes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..wire import pack_bits, packed_nbytes, unpack_bits
from . import _host
from .base import CompressionError, Compressor, Reserved, as_float32
from .layout import (
    Block,
    Layout,
    arange_within,
    decode_each,
    encode_each,
    flat,
    pack_sign_bits,
    plan_sign_bits,
    unpack_sign_bits,
)

OMEGA = 1.0 / 8.0


def _too_large(spec: str) -> CompressionError:
    return CompressionError(
        f"{spec}: finite input with |x| < 2^127 is required, got NaN, Inf or a value that "
        "rounds past the largest float32 power of two; the model diverged or the data holds "
        "non-finite values (lower the learning rate, check the inputs)."
    )


class Natural(Compressor):
    """Natural compression, ``(8/9) C_nat`` (``δ = 8/9``) or ``C_nat`` with ``:raw``."""

    codec_id = 6
    unbiased = True

    def __init__(self, raw: bool = False) -> None:
        self._raw = raw
        self.spec = "natural:raw" if raw else "natural"

    def payload_nbytes(self, numel: int) -> int:
        return packed_nbytes(numel) + numel

    def omega(self, numel: int) -> float:
        return OMEGA

    def delta(self, numel: int) -> float:
        return 1.0 - OMEGA if self._raw else 1.0 / (1.0 + OMEGA)

    def raw(self) -> Compressor:
        return self if self._raw else Natural(raw=True)

    def scale(self) -> float:
        """Decoding factor: ``1/(1 + ω) = 8/9``, or 1 for ``:raw``."""
        return 1.0 if self._raw else 1.0 / (1.0 + OMEGA)

    # ------------------------------------------------------------------ encode
    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        x32 = as_float32(x)
        if not _host.use_host_kernels(x32):
            if layout is not None:
                return encode_each(self, x, seed, layout)
            return 0, self._encode_device(x32, seed)
        layout = layout or flat(x.numel(), self.payload_nbytes(x.numel()))
        message = Reserved(layout.nbytes)
        payload = message.payload
        xn = x32.detach().numpy()
        seeds = layout.seeds(seed)
        for item in layout.items(self.spec, None, _prepare):
            if isinstance(item, Block):
                self._encode_block(xn[item.elem : item.elem + item.numel], item,
                                   payload[item.byte : item.stop], seeds[item.lo : item.hi])
            else:
                self._encode_alone(xn[item.elem : item.elem + item.size],
                                   payload[item.byte : item.stop], int(seeds[item.index]))
        return 0, message

    def _encode_alone(self, xn: np.ndarray, payload: np.ndarray, seed: int) -> None:
        numel = xn.size
        nsign = packed_nbytes(numel)
        signs, exps = payload[:nsign], payload[nsign:]
        bits = xn.view(np.uint32)
        bitgen = _host.host_bitgen(seed)
        scratch = np.empty(min(_host.CHUNK, numel), dtype=np.uint32)
        for start, stop in _host.chunks(numel):
            u = _host.random_u32(bitgen, stop - start)
            u >>= 9  # uniform on [0, 2^23)
            a = np.bitwise_and(bits[start:stop], np.uint32(0x7FFFFFFF), out=scratch[: stop - start])
            a += u
            a >>= 23
            if a.max() >= 255:
                raise _too_large(self.spec)
            exps[start:stop] = a
            packed = np.packbits(xn[start:stop] < 0, bitorder="little")
            signs[start // 8 : start // 8 + packed.size] = packed

    def _encode_block(self, xn: np.ndarray, block: Block, payload: np.ndarray,
                      seeds: np.ndarray) -> None:
        plan = block.plan
        u = np.empty(xn.size, dtype=np.uint32)
        bounds = plan["bounds"]
        for j, (seed, d) in enumerate(zip(seeds, plan["size_list"], strict=True)):
            u[bounds[j] : bounds[j + 1]] = _host.random_u32(_host.host_bitgen(int(seed)), d)
        u >>= 9  # uniform on [0, 2^23)
        a = np.bitwise_and(xn.view(np.uint32), np.uint32(0x7FFFFFFF))
        a += u
        a >>= 23
        if a.max() >= 255:
            raise _too_large(self.spec)
        payload[plan["exps"]] = a
        pack_sign_bits(xn < 0, plan, payload)

    def _encode_device(self, x32: torch.Tensor, seed: int) -> torch.Tensor:
        bits = x32.view(torch.int32)
        gen = _host.device_generator(seed, x32.device)
        u = torch.randint(0, 1 << 23, bits.shape, dtype=torch.int32, device=x32.device,
                          generator=gen)
        e = ((bits & 0x7FFFFFFF) + u) >> 23  # int32 overflow (NaN) shows as negative
        lo, hi = torch.aminmax(e)
        if int(lo) < 0 or int(hi) >= 255:
            raise _too_large(self.spec)
        return torch.cat([pack_bits(bits < 0), e.to(torch.uint8).cpu()])

    # ------------------------------------------------------------------ decode
    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if not _host.use_host_kernels(out):
            if layout is not None:
                return decode_each(self, payload, flags, seed, out, alpha, layout)
            numel = out.numel()
            nsign = packed_nbytes(numel)
            e = payload[nsign:].to(out.device).to(torch.int32) << 23
            neg = unpack_bits(payload[:nsign], numel, out.device).to(torch.int32) << 31
            out.add_((e | neg).view(torch.float32), alpha=alpha * self.scale())
            return None
        layout = layout or flat(out.numel(), self.payload_nbytes(out.numel()))
        data, target = payload.numpy(), out.detach().numpy()
        alpha = alpha * self.scale()
        for item in layout.items(self.spec, None, _prepare):
            if isinstance(item, Block):
                w = data[item.byte : item.stop][item.plan["exps"]].astype(np.uint32)
                w <<= 23
                w |= unpack_sign_bits(data[item.byte : item.stop], item).astype(np.uint32) << 31
                _host.add_into(target[item.elem : item.elem + item.numel], w.view(np.float32),
                               alpha)
            else:
                _decode_alone(data[item.byte : item.stop],
                              target[item.elem : item.elem + item.size], alpha)
        return None


def _decode_alone(payload: np.ndarray, target: np.ndarray, alpha: float) -> None:
    numel = target.size
    nsign = packed_nbytes(numel)
    signs, exps = payload[:nsign], payload[nsign:]
    word = np.empty(min(_host.CHUNK, numel), dtype=np.uint32)
    for start, stop in _host.chunks(numel):
        w = word[: stop - start]
        w[:] = exps[start:stop]
        w <<= 23
        neg = np.unpackbits(signs[start // 8 :], count=stop - start, bitorder="little")
        w |= neg.astype(np.uint32) << 31
        _host.add_into(target[start:stop], w.view(np.float32), alpha)


def _prepare(block: Block) -> None:
    """Plan a block: sign bytes first in each segment's payload, then one exponent byte per
    element (a boolean mask over the block's bytes)."""
    sizes, plan = block.sizes, block.plan
    nsign = (sizes + 7) // 8
    plan_sign_bits(block, block.offsets)
    plan["size_list"] = sizes.tolist()
    plan["bounds"] = block.bounds.tolist()
    exps = np.zeros(block.stop - block.byte, dtype=bool)
    exps[np.repeat(block.offsets + nsign, sizes) + arange_within(sizes)] = 1
    plan["exps"] = exps

"""Bucketed stochastic quantizers: ``qsgd:S`` (arXiv:1610.02132) and ``dither:S``
(natural dithering, arXiv:1905.10988).

Both split ``x`` into buckets of ``B`` consecutive entries (``B = 512`` by default, spec
option ``b=N``; ``b=0`` means one bucket per vector, the CHOCO paper's per-tensor QSGD) and
send, per bucket ``v``, its norm ``||v||_2`` (fp32) and, per entry, a sign bit and a level
index ``l_i`` drawn so that ``E[level(l_i)] = |v_i| / ||v||_2`` (unbiased):

* ``qsgd:S``: levels ``0, 1/S, …, 1``; ``l_i = floor(S |v_i|/||v|| + u_i)``, ``u_i ~ U[0,1)``
  (24 random bits, so unbiased up to the float32 rounding of ``|v_i|/||v||``).
  Variance ``ω = min(B/S², √B/S)`` (QSGD, Lemma 3.1).
* ``dither:S``: levels ``0, 2^(1-S), …, 1/2, 1``; stochastic rounding between the two
  adjacent levels. ``ω = 1/8 + √B 2^(1-S) min(1, √B 2^(1-S))`` (NC, natural dithering, ``p = 2``).

CHOCO needs a contraction, so both send ``Q = C/(1 + ω)`` with ``δ = 1/(1 + ω)``
(arXiv:1907.09356 §3, the CHOCO paper's rescaled QSGD); the ``:raw`` suffix sends ``C``
(``δ = 1 - ω``, possibly ``<= 0``) for DCD/ECD-PSGD. ``ω`` uses ``B' = min(B, d)``.

Wire: ``ceil(d/B)`` fp32 norms, then one ``(1 + ceil(log2(S+1)))``-bit field per entry,
``(level << 1) | negative``, bit-packed LSB-first (:func:`choco.wire.pack_uint`).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch

from ..wire import pack_uint, pack_uint_numpy, packed_nbytes, unpack_uint, unpack_uint_numpy
from . import _host
from .base import (
    CompressionError,
    Compressor,
    Reserved,
    as_float32,
    check_finite,
    from_bytes,
    to_bytes,
)
from .layout import Layout, decode_each, encode_each

DEFAULT_BUCKET = 512
MAX_LEVELS = 1 << 16


class BucketQuantizer(Compressor):
    """Base of :class:`QSGD` and :class:`Dither`; subclasses define the levels and ``ω``."""

    name: str
    unbiased = True
    max_levels = MAX_LEVELS

    def __init__(self, levels: int, bucket: int = DEFAULT_BUCKET, raw: bool = False) -> None:
        if not 1 <= levels <= self.max_levels:
            raise CompressionError(
                f"{self.name}: a number of levels S in [1, {self.max_levels}] is required, got "
                f"{levels}; e.g. {self.name}:{min(16, self.max_levels)}."
            )
        if bucket < 0:
            raise CompressionError(
                f"{self.name}: the bucket size must be >= 0 (0 = whole vector), got b={bucket}"
            )
        self.levels, self.bucket, self._raw = int(levels), int(bucket), raw
        self.width = 1 + math.ceil(math.log2(levels + 1))
        opts = ("" if bucket == DEFAULT_BUCKET else f":b={bucket}") + (":raw" if raw else "")
        self.spec = f"{self.name}:{levels}{opts}"
        self.table = torch.tensor(self.level_values(), dtype=torch.float32)
        #: value of each code ``(level << 1) | negative``: ``±table[level]``
        self.signed_table = torch.stack([self.table, -self.table], dim=1).reshape(-1)

    # ------------------------------------------------------------------ to define
    @abstractmethod
    def level_values(self) -> list[float]:
        """Magnitude (fraction of the bucket norm) of each level index ``0..S``."""

    @abstractmethod
    def levels_of(self, y, r):
        """Level indices (int32) of ``y = |v|/||v|| ∈ [0, 1]`` (float32), drawn with ``r``,
        uniform 24-bit integers (uint32 numpy or int32 torch arrays of ``y``'s shape)."""

    # ------------------------------------------------------------------ sizes, δ
    def bucket_size(self, numel: int) -> int:
        return numel if self.bucket == 0 else min(self.bucket, numel)

    def payload_nbytes(self, numel: int) -> int:
        buckets = -(-numel // self.bucket_size(numel))
        return 4 * buckets + packed_nbytes(numel * self.width)

    def delta(self, numel: int) -> float:
        omega = self.omega(numel)
        return 1.0 - omega if self._raw else 1.0 / (1.0 + omega)

    def raw(self) -> Compressor:
        return self if self._raw else type(self)(self.levels, self.bucket, raw=True)

    def scale(self, numel: int) -> float:
        """Decoding factor ``1/(1 + ω)``, or 1 for ``:raw``."""
        return 1.0 if self._raw else 1.0 / (1.0 + self.omega(numel))

    # ------------------------------------------------------------------ encode
    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        if layout is not None:
            return encode_each(self, x, seed, layout)
        x32 = as_float32(x)
        size = self.bucket_size(x32.numel())
        if _host.use_host_kernels(x32):
            return 0, self._encode_host(x32.detach().numpy(), size, seed)
        return 0, self._encode_device(x32, size, seed)

    def _chunk(self, size: int) -> int:
        return 8 * size * max(1, _host.CHUNK // (8 * size))

    def bucket_norms(self, v: np.ndarray, xn: np.ndarray) -> np.ndarray:
        """``||v_b||_2`` of every bucket (row) of ``v`` as fp32, the host encoder's values;
        raises the encoder's error for a non-finite ``xn`` (the vector ``v`` comes from)
        or an infinite norm."""
        norms = np.sqrt(np.einsum("ij,ij->i", v, v))
        if not np.isfinite(norms).all():  # NaN/Inf input, or squares that overflowed
            check_finite(torch.from_numpy(xn), self.spec)
            v64 = v.astype(np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", v64, v64)).astype(np.float32)
            self._check_norms(torch.from_numpy(norms))
        return norms

    def _check_norms(self, norms: torch.Tensor) -> None:
        if not bool(torch.isfinite(norms).all()):
            raise CompressionError(
                f"{self.spec}: bucket norms below the float32 maximum are required, got an "
                "infinite norm; the model diverged (lower the learning rate)."
            )

    def _encode_host(self, xn: np.ndarray, size: int, seed: int) -> Reserved:
        numel = xn.size
        buckets = -(-numel // size)
        message = Reserved(4 * buckets + packed_nbytes(numel * self.width))
        payload = message.payload
        norms_out = payload[: 4 * buckets].view(np.float32)
        codes_out = payload[4 * buckets :]
        bitgen = _host.host_bitgen(seed)
        for start, stop in _host.chunks(numel, self._chunk(size)):
            n = stop - start
            nb = -(-n // size)
            v = xn[start:stop]
            if n != nb * size:
                v = np.concatenate([v, np.zeros(nb * size - n, dtype=np.float32)])
            v = v.reshape(nb, size)
            norms = self.bucket_norms(v, xn)
            inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
            y = np.abs(v) * inv[:, None]
            r = _host.random_u32(bitgen, y.size).reshape(y.shape)
            r >>= 8
            codes = (self.levels_of(y, r) << 1) | (v < 0)
            packed = pack_uint_numpy(codes.reshape(-1)[:n], self.width)
            at = start * self.width // 8
            codes_out[at : at + packed.size] = packed
            norms_out[start // size : start // size + nb] = norms
        return message

    def _encode_device(self, x32: torch.Tensor, size: int, seed: int) -> torch.Tensor:
        numel = x32.numel()
        buckets = -(-numel // size)
        v = torch.zeros(buckets * size, dtype=torch.float32, device=x32.device)
        v[:numel] = x32
        v = v.view(buckets, size)
        norms = torch.linalg.vector_norm(v, dim=1)
        if not bool(torch.isfinite(norms).all()):
            check_finite(x32, self.spec)
            norms = torch.linalg.vector_norm(v.double(), dim=1).float()
            self._check_norms(norms)
        inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
        y = v.abs() * inv[:, None]
        gen = _host.device_generator(seed, x32.device)
        r = torch.randint(0, 1 << 24, y.shape, dtype=torch.int32, generator=gen,
                          device=x32.device)
        codes = (self.levels_of(y, r) << 1) | (v < 0).to(torch.int32)
        packed = pack_uint(codes.view(-1)[:numel], self.width)
        return torch.cat([to_bytes(norms), packed])

    # ------------------------------------------------------------------ decode
    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if layout is not None:
            return decode_each(self, payload, flags, seed, out, alpha, layout)
        numel = out.numel()
        size = self.bucket_size(numel)
        buckets = -(-numel // size)
        alpha = alpha * self.scale(numel)
        codes_in = payload[4 * buckets :]
        if _host.use_host_kernels(out):
            norms = payload[: 4 * buckets].numpy().view(np.float32)
            target = out.detach().numpy()
            signed = self.signed_table.numpy()
            for start, stop in _host.chunks(numel, self._chunk(size)):
                n = stop - start
                codes = unpack_uint_numpy(codes_in[start * self.width // 8 :].numpy(), n,
                                          self.width)
                values = signed[codes]  # ±level, indexed by (level << 1) | negative
                first, nb = start // size, -(-n // size)
                if n == nb * size:
                    values.reshape(nb, size)[...] *= norms[first : first + nb, None]
                else:
                    values *= np.repeat(norms[first : first + nb], size)[:n]
                _host.add_into(target[start:stop], values, alpha)
            return
        norms_t = from_bytes(payload[: 4 * buckets], torch.float32, out.device)
        codes_t = unpack_uint(codes_in, numel, self.width, out.device)
        values_t = self.signed_table.to(out.device)[codes_t]
        values_t = values_t * norms_t.repeat_interleave(size)[:numel]
        out.add_(values_t, alpha=alpha)


class QSGD(BucketQuantizer):
    """``qsgd:S[:b=B][:raw]``: QSGD with ``S`` uniform levels per bucket (arXiv:1610.02132).

    ``C(v)_i = ||v|| sign(v_i) l_i/S`` with ``l_i = floor(S|v_i|/||v|| + u_i)``; unbiased,
    ``ω = min(B'/S², √B'/S)``. CHOCO form ``Q = C/(1 + ω)``: ``δ = 1/(1 + ω)``
    (0.414 documented for S = 16, B = 512; about 0.60 measured on N(0, 1)).
    Bits per element: ``1 + ceil(log2(S+1)) + 32/B``.
    """

    codec_id = 7
    name = "qsgd"

    def level_values(self) -> list[float]:
        return [i / self.levels for i in range(self.levels + 1)]

    def levels_of(self, y, r):
        # floor(S y + u) with u = r / 2^24, exact in float32
        if isinstance(y, np.ndarray):
            level = (y * np.float32(self.levels) + r.astype(np.float32) * np.float32(2.0**-24))
            return level.astype(np.int32).clip(0, self.levels)
        level = y * self.levels + r.to(torch.float32) * 2.0**-24
        return level.to(torch.int32).clip(0, self.levels)

    def omega(self, numel: int) -> float:
        b = self.bucket_size(numel)
        return min(b / self.levels**2, math.sqrt(b) / self.levels)


class Dither(BucketQuantizer):
    """``dither:S[:b=B][:raw]``: natural dithering with ``S`` levels (arXiv:1905.10988).

    Levels ``0`` and ``2^(j-S)``, ``j = 1..S``, of ``|v_i|/||v||_2``: in ``t = 2^(S-1)|v_i|/||v||``
    units, ``t ∈ [2^a, 2^(a+1))`` rounds up with probability ``t/2^a - 1`` and ``t < 1`` rounds
    to 1 with probability ``t``; unbiased, ``ω = 1/8 + √B' 2^(1-S) min(1, √B' 2^(1-S))``.
    CHOCO form ``Q = C/(1 + ω)``, ``δ = 1/(1 + ω)`` (0.865 for S = 8, B = 512).
    Bits per element: ``1 + ceil(log2(S+1)) + 32/B``.
    """

    codec_id = 8
    name = "dither"
    max_levels = 32  # the smallest level 2^(1-S) stays a normal float32

    def level_values(self) -> list[float]:
        return [0.0] + [2.0 ** (j - self.levels) for j in range(1, self.levels + 1)]

    def levels_of(self, y, r):
        # t = 2^(S-1) y; t >= 1: the natural-compression bit trick on t's float32 bits
        # (exponent rounded up with probability m / 2^23) gives level a+1 or a+2 for
        # t in [2^a, 2^(a+1)); t < 1: level 1 with probability t (r < t 2^24), else 0.
        if isinstance(y, np.ndarray):
            t = y * np.float32(2.0 ** (self.levels - 1))
            bits = t.view(np.uint32)
            high = bits + (r >> 1)
            high >>= 23
            low = r.astype(np.float32) < t * np.float32(2.0**24)  # float32, exact: r < 2^24
            level = high.view(np.int32)
            level -= 126 + low  # level = low + [t >= 1] (high - 126 - low), no np.where
            level *= bits >= 0x3F800000
            level += low
            return level.clip(0, self.levels)
        t = y * 2.0 ** (self.levels - 1)
        bits = t.view(torch.int32)
        high = ((bits + (r >> 1)) >> 23) - 126
        level = torch.where(bits >= 0x3F800000, high, (r < t * 2.0**24).to(torch.int32))
        return level.to(torch.int32).clip(0, self.levels)

    def omega(self, numel: int) -> float:
        r = math.sqrt(self.bucket_size(numel)) * 2.0 ** (1 - self.levels)
        return 1.0 / 8.0 + r * min(1.0, r)

"""Per-tensor compression of a flat parameter buffer.

The CHOCO paper compresses each layer on its own (per-tensor ``k``, scale and norm; ResNet-20
has 59 tensors with option-A shortcuts, 65 with option B; arXiv:1907.09356 §5).
:class:`PerTensor` applies an inner compressor to each segment of a flat vector and
concatenates the messages, so one buffer still travels per step. Its contraction is the
worst over the segments: ``δ = min_l δ_l(d_l)``, because
``||Q(x) - x||^2 = Σ_l ||Q(x_l) - x_l||^2 <= Σ_l (1 - δ_l) ||x_l||^2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..wire.framing import HEADER_SIZE, check_codec, parse_header
from .base import CompressionError, Compressor

#: codec id of lgc (choco.compress.lgc), which cannot run per tensor
LGC_CODEC = 11


def segment_seed(seed: int, index: int) -> int:
    """A distinct 64-bit seed per segment (splitmix64 of ``seed + index``)."""
    z = (seed + 0x9E3779B97F4A7C15 * (index + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


class PerTensor(Compressor):
    """Apply ``inner`` to each of the consecutive segments ``sizes`` of a flat vector."""

    codec_id = 100

    def __init__(self, inner: Compressor, sizes: Sequence[int]) -> None:
        if not sizes or any(int(s) < 1 for s in sizes):
            raise CompressionError(
                f"per-tensor compression needs positive segment sizes, got {list(sizes)[:8]}"
            )
        if getattr(inner, "codec_id", None) == LGC_CODEC:  # lgc: one learned code per vector
            raise CompressionError(
                f"lgc learns one code for a whole vector and cannot run per tensor, got "
                f"per-tensor {inner.spec}; compress the flat vector (no --sizes)"
            )
        self.inner = inner
        self.sizes = [int(s) for s in sizes]
        self.numel = sum(self.sizes)
        self.spec = inner.spec
        self.unbiased = inner.unbiased
        self.is_raw = inner.is_raw

    def _check(self, numel: int) -> None:
        if numel != self.numel:
            raise CompressionError(
                f"per-tensor {self.spec}: segments cover {self.numel} elements, got a vector "
                f"of {numel}; build PerTensor with the sizes of the tensors being gossiped."
            )

    def nbytes(self, numel: int, dtype: torch.dtype = torch.float32) -> int:
        self._check(numel)
        return HEADER_SIZE + sum(self.inner.nbytes(s, dtype) for s in self.sizes)

    def payload_nbytes(self, numel: int) -> int:
        return self.nbytes(numel) - HEADER_SIZE

    def delta(self, numel: int) -> float:
        self._check(numel)
        return min(self.inner.delta(s) for s in self.sizes)

    def omega(self, numel: int) -> float:
        self._check(numel)
        return max(self.inner.omega(s) for s in self.sizes)

    def raw(self) -> Compressor:
        return self if self.is_raw else PerTensor(self.inner.raw(), self.sizes)

    def read_header(self, buf: torch.Tensor) -> tuple[int, int, int]:
        """Check the header of ``buf`` and its ``numel``; return ``(flags, numel, seed)``.

        The total length is not checked here: each segment's message is checked against its
        own header in :meth:`decode_payload_add_` (identity's lengths depend on the dtype).
        """
        codec, flags, numel, seed = parse_header(buf, self.spec)
        check_codec(codec, self.codec_id, f"per-tensor {self.spec}", fix="")
        self._check(numel)
        return flags, numel, seed

    def encode_payload(self, x: torch.Tensor, seed: int) -> tuple[int, torch.Tensor]:
        self._check(x.numel())
        parts = [
            self.inner.encode(seg, segment_seed(seed, i))
            for i, seg in enumerate(torch.split(x, self.sizes))
        ]
        return 0, torch.cat(parts)

    def decode_payload_add_(self, payload, flags, seed, out, alpha):
        pos = 0
        for seg in torch.split(out, self.sizes):
            _, seg_flags, numel, _ = parse_header(payload[pos:], self.spec)
            length = self.inner.message_nbytes(numel, seg_flags)
            self.inner.decode_add_(payload[pos : pos + length], seg, alpha)
            pos += length
        if pos != payload.numel():
            raise CompressionError(
                f"per-tensor {self.spec}: {payload.numel() - pos} trailing bytes; corrupt buffer"
            )

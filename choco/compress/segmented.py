"""Per-tensor compression of a flat parameter buffer: framing over a segment layout.

The CHOCO paper compresses each layer on its own (per-tensor ``k``, scale and norm; ResNet-20
has 59 tensors with option-A shortcuts, 65 with option B; arXiv:1907.09356 §5).
:class:`PerTensor` applies an inner compressor to each segment of a flat vector and
concatenates the messages, so one buffer still travels per step. Its contraction is the
worst over the segments: ``δ = min_l δ_l(d_l)``, because
``||Q(x) - x||^2 = Σ_l ||Q(x_l) - x_l||^2 <= Σ_l (1 - δ_l) ||x_l||^2``.

Wire: the message header (codec 100), then for every segment ``l`` the message
``inner.encode(x_l, segment_seed(seed, l))`` (its own header, then its payload). This class
is the framing only: it writes and checks the segment headers, and hands the whole buffer
and the :class:`~choco.compress.layout.Layout` (where each payload sits) to the inner
codec, whose one host implementation codes all segments (batched, for sign, top-k,
random-block and natural) or each alone (:func:`~choco.compress.layout.encode_each`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..wire.framing import (
    HEADER_SIZE,
    Reserved,
    check_codec,
    check_length,
    pack_header,
    parse_header,
)
from .base import CompressionError, Compressor, message_nbytes
from .layout import BATCH_MAX, Layout, segment_seed, segment_seeds
from .stateful import is_stateful

__all__ = ["BATCH_MAX", "PerTensor", "segment_seed", "segment_seeds"]


class PerTensor(Compressor):
    """Apply ``inner`` to each of the consecutive segments ``sizes`` of a flat vector."""

    codec_id = 100

    def __init__(self, inner: Compressor, sizes: Sequence[int]) -> None:
        if not sizes or any(int(s) < 1 for s in sizes):
            raise CompressionError(
                f"per-tensor compression needs positive segment sizes, got {list(sizes)[:8]}"
            )
        if is_stateful(inner):  # lgc: one learned code per vector
            raise CompressionError(
                f"lgc learns one code for a whole vector and cannot run per tensor, got "
                f"per-tensor {inner.spec}; compress the flat vector (no --sizes)"
            )
        self.inner = inner
        self.sizes = [int(s) for s in sizes]
        self.numel = sum(self.sizes)
        self.spec = inner.spec
        self.unbiased = inner.unbiased
        self._raw = inner._raw
        self._framing: tuple[Layout, np.ndarray, np.ndarray] | None = None
        self._nbytes: dict[torch.dtype, int] = {}

    def _segments(self) -> tuple[Layout, np.ndarray, np.ndarray]:
        """``(layout, index of the segment header bytes, header template)``, built once."""
        if self._framing is None:
            layout = Layout.framed(self.sizes, self.inner.payload_nbytes)
            template = np.frombuffer(b"".join(
                pack_header(self.inner.codec_id, 0, s, 0) for s in self.sizes),
                dtype=np.uint8).reshape(-1, HEADER_SIZE)
            starts = layout.offsets - HEADER_SIZE
            index = (starts[:, None] + np.arange(HEADER_SIZE)).reshape(-1)
            self._framing = (layout, index, template)
        return self._framing

    def _headers_for(self, flags: int, seed: int) -> np.ndarray:
        """Every segment header: the template with ``flags`` and the segment seeds."""
        layout, _, template = self._segments()
        headers = template.copy()
        headers[:, 2:4] = np.frombuffer(int(flags).to_bytes(2, "little"), dtype=np.uint8)
        headers[:, 8:] = segment_seeds(seed, np.arange(layout.count)).astype("<u8").view(
            np.uint8).reshape(-1, 8)
        return headers.reshape(-1)

    def _check(self, numel: int) -> None:
        if numel != self.numel:
            raise CompressionError(
                f"per-tensor {self.spec}: segments cover {self.numel} elements, got a vector "
                f"of {numel}; build PerTensor with the sizes of the tensors being gossiped."
            )

    def nbytes(self, numel: int, dtype: torch.dtype = torch.float32) -> int:
        """``16 + Σ_l inner.nbytes(d_l, dtype)`` (cached per dtype: the sizes are fixed)."""
        self._check(numel)
        total = self._nbytes.get(dtype)
        if total is None:
            total = HEADER_SIZE + sum(self.inner.nbytes(s, dtype) for s in self.sizes)
            self._nbytes[dtype] = total
        return total

    def payload_nbytes(self, numel: int) -> int:
        return self.nbytes(numel) - HEADER_SIZE

    def delta(self, numel: int) -> float:
        self._check(numel)
        return min(self.inner.delta(s) for s in self.sizes)

    def omega(self, numel: int) -> float:
        self._check(numel)
        return max(self.inner.omega(s) for s in self.sizes)

    def raw(self) -> Compressor:
        return self if self._raw else PerTensor(self.inner.raw(), self.sizes)

    def _read_header(self, buf: torch.Tensor) -> tuple[int, int, int]:
        """Check the header of ``buf`` and its ``numel``; return ``(flags, numel, seed)``.

        The total length is not checked here: each segment's message is checked against its
        own header in :meth:`decode_payload_add_` (identity's lengths depend on the dtype).
        """
        codec, flags, numel, seed = parse_header(buf, self.spec)
        check_codec(codec, self.codec_id, f"per-tensor {self.spec}", fix="")
        self._check(numel)
        return flags, numel, seed

    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        self._check(x.numel())
        segments, index, _ = self._segments()
        flags, message = self.inner.encode_payload(x, seed, segments)
        payload = message.payload if isinstance(message, Reserved) else message.numpy()
        payload[index] = self._headers_for(flags, seed)
        return 0, message

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        segments, index, _ = self._segments()
        data = payload.numpy()
        inner_flags = int(data[2]) | int(data[3]) << 8 if data.size >= 4 else 0
        if data.size != segments.nbytes or not np.array_equal(
                data[index], self._headers_for(inner_flags, seed)):
            self._reject(payload)
        self.inner.decode_payload_add_(payload, inner_flags, seed, out.view(-1), alpha,
                                       segments)

    def _reject(self, payload: torch.Tensor) -> None:
        """Raise the error of the first segment message that does not check out."""
        pos = 0
        for size in self.sizes:
            codec, seg_flags, numel, _ = parse_header(payload[pos:], self.spec)
            check_codec(codec, self.inner.codec_id, self.spec)
            if numel != size:
                raise CompressionError(
                    f"per-tensor {self.spec}: a segment message holds {numel} elements, "
                    f"expected {size}; sender and receiver must use the same tensor sizes."
                )
            length = message_nbytes(self.inner, numel, seg_flags)
            check_length(payload[pos : pos + length], length, numel, self.spec)
            pos += length
        if pos != payload.numel():
            raise CompressionError(
                f"per-tensor {self.spec}: {payload.numel() - pos} trailing bytes; corrupt buffer"
            )
        raise CompressionError(
            f"per-tensor {self.spec}: segment headers do not match the message (flags or "
            "seeds differ); corrupt buffer"
        )

"""The compressor interface: ``Q`` of CHOCO-Gossip as an encoder to bytes and a decoder.

Notation (pinned for the whole package, ICLR's, arXiv:1907.09356): a compression operator
``Q`` is *δ-contractive* if

.. math:: \\mathbb{E}\\,\\|Q(x) - x\\|^2 \\le (1 - \\delta)\\,\\|x\\|^2,
   \\qquad \\delta \\in (0, 1].

An unbiased operator ``C`` with variance ``E||C(x) - x||^2 <= ω ||x||^2`` is made contractive
by rescaling, ``Q = C / (1 + ω)``, which gives ``δ = 1 / (1 + ω)`` (arXiv:1907.09356, §3).

Every compressor encodes a flat tensor into a flat ``uint8`` buffer (a CPU tensor). The
buffer is what travels on the wire: the bytes counted are the bytes sent. Each buffer starts
with the same 16-byte :data:`HEADER` (magic, codec id, flags, numel, seed), so a receiver can
check what it was given and regenerate shared randomness (rand-k positions) from the seed.
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

#: ``<BBHIQ``: magic byte, codec id, flags (codec-specific), numel, 64-bit seed.
HEADER = struct.Struct("<BBHIQ")
HEADER_SIZE = HEADER.size
MAGIC = 0xC7
MAX_NUMEL = 2**31 - 1


class CompressionError(ValueError):
    """Bad input to a compressor or a buffer that does not decode (requirement, value, fix)."""


class Reserved:
    """A host message buffer with room for the header, whose payload ``_encode`` fills.

    Returning one from ``_encode`` instead of a payload tensor saves a copy of large
    payloads: :meth:`Compressor.encode` writes the header in front and returns the buffer.
    """

    __slots__ = ("buffer",)

    def __init__(self, payload_nbytes: int) -> None:
        self.buffer = np.empty(HEADER_SIZE + payload_nbytes, dtype=np.uint8)

    @property
    def payload(self) -> np.ndarray:
        """The payload part, a numpy view to write into."""
        return self.buffer[HEADER_SIZE:]


def payload_tensor(payload: torch.Tensor | Reserved) -> torch.Tensor:
    """The payload bytes of an ``_encode`` result as a CPU uint8 tensor (no copy)."""
    return torch.from_numpy(payload.payload) if isinstance(payload, Reserved) else payload


class Compressor(ABC):
    """A compression operator ``Q`` with an exact wire format.

    Subclasses set ``codec_id`` (unique, used in the header), implement :meth:`payload_nbytes`,
    :meth:`_encode` and :meth:`_decode_add_`, and document ``δ`` (:meth:`delta`).

    Attributes
    ----------
    spec : str
        Canonical spec string, parsed back by :func:`choco.compress.make_compressor`.
    unbiased : bool
        Whether ``Q`` is an unbiased operator ``C`` (``E[C(x)] = x``, variance
        :meth:`omega`), sent as ``Q = C / (1 + ω)`` for CHOCO or as ``C`` itself when
        :attr:`is_raw`. :meth:`raw` returns the ``C`` form that DCD/ECD-PSGD need.
    is_raw : bool
        Whether this is the unscaled unbiased form ``C`` (spec suffix ``:raw``), whose
        :meth:`delta` is ``1 - ω`` and may be ``<= 0``: not contractive, not for CHOCO.
    """

    codec_id: ClassVar[int]
    spec: str
    unbiased: bool = False
    is_raw: bool = False

    # ------------------------------------------------------------------ sizes and quality
    def nbytes(self, numel: int, dtype: torch.dtype = torch.float32) -> int:
        """Exact length in bytes of the encoded message for a ``numel``-element vector.

        Only ``identity`` depends on the vector's ``dtype``; every other format sends fp32.
        """
        return HEADER_SIZE + self.payload_nbytes(numel)

    @abstractmethod
    def payload_nbytes(self, numel: int) -> int:
        """Bytes after the header for a ``numel``-element vector (the payload formula)."""

    @abstractmethod
    def delta(self, numel: int) -> float:
        """Documented worst-case contraction ``δ`` for a ``numel``-element vector."""

    def omega(self, numel: int) -> float:
        """Variance bound ``ω`` of the unbiased form: ``E||C(x) - x||^2 <= ω ||x||^2``."""
        raise CompressionError(
            f"{self.spec} is biased, so it has no variance ω; unbiased compressors are "
            "identity, randk, randblock, natural, dither and qsgd."
        )

    def raw(self) -> Compressor:
        """The unscaled unbiased form ``C`` (for DCD/ECD-PSGD baselines), see :attr:`is_raw`."""
        raise CompressionError(
            f"{self.spec} is biased and has no unbiased form; DCD/ECD-PSGD need one of "
            "randk:R, randblock:R, natural, dither:S, qsgd:S (identity is exact)."
        )

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Encode ``x`` (any shape, flattened) into a CPU ``uint8`` buffer of :meth:`nbytes`.

        ``seed`` keys the compressor's randomness; the gossip derives it from (base seed,
        rank, step) so that runs are reproducible.
        """
        flat = x.reshape(-1)
        numel = flat.numel()
        if numel < 1 or numel > MAX_NUMEL:
            raise CompressionError(
                f"{self.spec}: a vector with 1 <= numel <= {MAX_NUMEL} is required, got "
                f"numel={numel}; split larger models into per-tensor segments."
            )
        if not flat.is_floating_point():
            raise CompressionError(
                f"{self.spec}: a floating-point tensor is required, got dtype {flat.dtype}; "
                "convert it with .float() first."
            )
        seed &= 0xFFFFFFFFFFFFFFFF
        flags, payload = self._encode(flat, seed)
        header = torch.frombuffer(
            bytearray(HEADER.pack(MAGIC, self.codec_id, flags, numel, seed)), dtype=torch.uint8
        )
        if isinstance(payload, Reserved):
            out = torch.from_numpy(payload.buffer)
        else:
            out = torch.empty(HEADER_SIZE + len(payload), dtype=torch.uint8)
            if len(payload):
                out[HEADER_SIZE:] = payload
        out[:HEADER_SIZE] = header
        if out.numel() != self._nbytes_from_header(numel, flags):
            raise RuntimeError(  # a bug in the compressor, not a user error
                f"{self.spec}: encoded {out.numel()} bytes for numel={numel}, but the format "
                f"says {self._nbytes_from_header(numel, flags)}"
            )
        return out

    def decode_add_(self, buf: torch.Tensor, out: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """Add ``alpha * Q(x)`` decoded from ``buf`` into the flat tensor ``out``, in place.

        Sparse messages add only their support: they are never densified.
        """
        flags, numel, seed = self.read_header(buf)
        if out.numel() != numel:
            raise CompressionError(
                f"{self.spec}: message holds {numel} elements but the target has "
                f"{out.numel()}; sender and receiver must gossip vectors of the same size."
            )
        self._decode_add_(buf[HEADER_SIZE:], flags, seed, out.view(-1), alpha)
        return out

    def decode(
        self,
        buf: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Decode ``buf`` into a new flat tensor of ``dtype`` on ``device``."""
        _, numel, _ = self.read_header(buf)
        out = torch.zeros(numel, dtype=dtype, device=device)
        return self.decode_add_(buf, out)

    def __call__(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """``Q(x)``: encode then decode, same shape, dtype and device as ``x``."""
        return self.decode(self.encode(x, seed), x.dtype, x.device).view_as(x)

    def read_header(self, buf: torch.Tensor) -> tuple[int, int, int]:
        """Check the header and length of ``buf`` and return ``(flags, numel, seed)``."""
        codec, flags, numel, seed = parse_header(buf, self.spec)
        if codec != self.codec_id:
            raise CompressionError(
                f"{self.spec}: buffer has codec {codec}, expected {self.codec_id}; every node "
                "must use the same compressor."
            )
        expected = self._nbytes_from_header(numel, flags)
        if buf.numel() != expected:
            raise CompressionError(
                f"{self.spec}: a {numel}-element message is {expected} bytes, got "
                f"{buf.numel()}; the buffer was truncated or produced by another version."
            )
        return flags, numel, seed

    def _nbytes_from_header(self, numel: int, flags: int) -> int:
        return self.nbytes(numel)

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def _encode(self, x: torch.Tensor, seed: int) -> tuple[int, torch.Tensor | Reserved]:
        """Return ``(flags, payload)``: header flags and a CPU uint8 payload tensor (or a
        :class:`Reserved` buffer whose payload was written in place)."""

    @abstractmethod
    def _decode_add_(
        self, payload: torch.Tensor, flags: int, seed: int, out: torch.Tensor, alpha: float
    ) -> None:
        """Add ``alpha * Q`` from ``payload`` into the flat tensor ``out``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def parse_header(buf: torch.Tensor, spec: str = "message") -> tuple[int, int, int, int]:
    """Read the :data:`HEADER` at the start of ``buf``: ``(codec, flags, numel, seed)``."""
    if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() < HEADER_SIZE:
        raise CompressionError(
            f"{spec}: a 1-D uint8 buffer of at least {HEADER_SIZE} bytes is required, "
            f"got dtype {buf.dtype} shape {tuple(buf.shape)}."
        )
    magic, codec, flags, numel, seed = HEADER.unpack(buf[:HEADER_SIZE].numpy().tobytes())
    if magic != MAGIC:
        raise CompressionError(f"{spec}: bad magic byte {magic:#x}; not a choco message")
    return codec, flags, numel, seed


def check_finite(value: torch.Tensor, spec: str) -> None:
    """Raise if ``value`` (a reduction or the selected entries of x) holds NaN or Inf."""
    if not bool(torch.isfinite(value).all()):
        raise CompressionError(
            f"{spec}: finite input is required, got NaN or Inf; the model diverged or the "
            "data holds non-finite values (lower the learning rate, check the inputs)."
        )


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 on its own device (a no-op for float32; fp16/fp64 are converted)."""
    return x if x.dtype == torch.float32 else x.to(torch.float32)


def ratio_count(ratio: float, numel: int) -> int:
    """``k = max(1, ceil(ratio * numel))``, at most ``numel`` (choco's rule for top/rand-k)."""
    return min(numel, max(1, math.ceil(ratio * numel)))


def to_bytes(t: torch.Tensor) -> torch.Tensor:
    """View a contiguous CPU tensor's storage as a flat ``uint8`` tensor (moves to host)."""
    return t.detach().to("cpu").contiguous().view(-1).view(torch.uint8)


def from_bytes(payload: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Reinterpret a ``uint8`` payload slice as ``dtype`` and move it to ``device``."""
    size = torch.empty((), dtype=dtype).element_size()
    if payload.storage_offset() % size or not payload.is_contiguous():
        payload = payload.clone()  # views need the offset aligned to the element size
    return payload.view(dtype).to(device)

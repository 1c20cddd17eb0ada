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
The header, its packing and parsing, and the length checks live in
:mod:`choco.wire.framing`; a compressor defines only its payload
(:meth:`Compressor.encode_payload`, :meth:`Compressor.decode_payload_add_`) and the exact
length of its messages (:meth:`Compressor.nbytes`, or the protected hook
``_message_nbytes`` when the length depends on the header flags).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from ..errors import CompressionError
from ..wire.framing import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_NUMEL,
    SEED_MASK,
    Reserved,
    check_encoded_length,
    check_numel,
    frame,
    parse_header,
    payload_tensor,
    read_header,
)

if TYPE_CHECKING:
    from .layout import Layout

#: ``HEADER`` … ``MAX_NUMEL``, ``Reserved``, ``parse_header`` and ``payload_tensor`` are
#: re-exported from :mod:`choco.wire.framing`, where the framing is defined
__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_NUMEL",
    "CompressionError",
    "Compressor",
    "Reserved",
    "as_float32",
    "check_finite",
    "decode",
    "from_bytes",
    "header_of",
    "is_raw",
    "message_nbytes",
    "parse_header",
    "payload_tensor",
    "ratio_count",
    "to_bytes",
]


class Compressor(ABC):
    """A compression operator ``Q`` with an exact wire format.

    A message is the :data:`HEADER` then a payload (:mod:`choco.wire.framing`). Subclasses
    set ``codec_id`` (unique, used in the header), implement :meth:`payload_nbytes`,
    :meth:`encode_payload` and :meth:`decode_payload_add_` (and the protected hook
    ``_message_nbytes(numel, flags)`` if the length depends on the header flags), and
    document ``δ`` (:meth:`delta`).

    The public members are twelve: the codec's identity (``codec_id``, ``spec``,
    ``unbiased``), its sizes (:meth:`nbytes`, :meth:`payload_nbytes`), its quality
    (:meth:`delta`, :meth:`omega`), its raw form (:meth:`raw`), and encode / decode-add in
    two layers. :meth:`encode` and :meth:`decode_add_` handle whole messages (header
    written, checked and stripped). :meth:`encode_payload` and :meth:`decode_payload_add_`
    (with ``_message_nbytes``) handle the payload alone: combinators
    (:class:`~choco.compress.Composed`, :class:`~choco.compress.Scaled`,
    :class:`~choco.compress.PerTensor`) build their own messages from them, and use nothing
    else of the compressors they wrap. The module functions :func:`decode` (into a new
    tensor), :func:`is_raw`, :func:`message_nbytes` and :func:`header_of` are derived from
    these.

    A compressor is a pure function of its input and the seed it is given. A codec whose
    messages also depend on per-node state that it learns or keeps (``lgc``) declares it
    through the optional protocol of :mod:`choco.compress.stateful`; the state is then the
    gossip's, not the compressor's.

    Attributes
    ----------
    codec_id : int
        The header's codec byte, one per family (built-in codecs use 1–127).
    spec : str
        Canonical spec string, parsed back by :func:`choco.compress.make_compressor`.
    unbiased : bool
        Whether ``Q`` is an unbiased operator ``C`` (``E[C(x)] = x``, variance
        :meth:`omega`), sent as ``Q = C / (1 + ω)`` for CHOCO or as ``C`` itself when
        :func:`is_raw`. :meth:`raw` returns the ``C`` form that DCD/ECD-PSGD need.
    """

    codec_id: int
    spec: str
    unbiased: bool = False
    #: whether this is the unscaled form ``C`` (read it with :func:`is_raw`); set by the
    #: unbiased families built with ``raw=True``
    _raw: bool = False

    # ------------------------------------------------------------------ sizes and quality
    def nbytes(self, numel: int, dtype: torch.dtype = torch.float32) -> int:
        """Exact length in bytes of the encoded message for a ``numel``-element vector.

        Only ``identity`` depends on the vector's ``dtype``; every other format sends fp32.
        ``Identity().nbytes(numel, dtype)`` is the size of an uncompressed message
        (``16 + numel * itemsize``).
        """
        return HEADER_SIZE + self.payload_nbytes(numel)

    @abstractmethod
    def payload_nbytes(self, numel: int) -> int:
        """Bytes after the header for a ``numel``-element fp32 vector (the payload formula)."""

    def _message_nbytes(self, numel: int, flags: int) -> int:
        """Exact length in bytes of a message whose header holds ``numel`` and ``flags``
        (the framing's hook; read it with :func:`message_nbytes`).

        What a receiver checks a buffer against, before decoding it; the encoder's output
        always has this length. Equal to :meth:`nbytes` unless the length depends on the
        flags (identity's dtype code), which is why the default ignores ``flags``.
        """
        return self.nbytes(numel)

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
        """The unscaled unbiased form ``C`` (for DCD/ECD-PSGD baselines), see :func:`is_raw`.

        The raw form is its own raw form (``q.raw().raw() is q.raw()``)."""
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
        check_numel(numel, self.spec)
        if not flat.is_floating_point():
            raise CompressionError(
                f"{self.spec}: a floating-point tensor is required, got dtype {flat.dtype}; "
                "convert it with .float() first."
            )
        seed &= SEED_MASK
        flags, payload = self.encode_payload(flat, seed)
        out = frame(payload, self.codec_id, flags, numel, seed)
        check_encoded_length(out, self._message_nbytes(numel, flags), numel, self.spec)
        return out

    def _read_header(self, buf: torch.Tensor) -> tuple[int, int, int]:
        """Check the header and exact length of ``buf``; return ``(flags, numel, seed)``."""
        return read_header(buf, self.codec_id, self.spec, self._message_nbytes)

    def decode_add_(self, buf: torch.Tensor, out: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """Add ``alpha * Q(x)`` decoded from ``buf`` into the flat tensor ``out``, in place.

        Sparse messages add only their support: they are never densified.
        """
        flags, numel, seed = header_of(self, buf)
        if out.numel() != numel:
            raise CompressionError(
                f"{self.spec}: message holds {numel} elements but the target has "
                f"{out.numel()}; sender and receiver must gossip vectors of the same size."
            )
        self.decode_payload_add_(buf[HEADER_SIZE:], flags, seed, out.view(-1), alpha)
        return out

    def __call__(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """``Q(x)``: encode then decode, same shape, dtype and device as ``x``."""
        return decode(self, self.encode(x, seed), x.dtype, x.device).view_as(x)

    # ------------------------------------------------------------------ payload (to implement)
    @abstractmethod
    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        """Compress ``x`` into ``(flags, payload)``: the header flags and the bytes after it.

        With a ``layout`` (:class:`~choco.compress.layout.Layout`, segments of ``x``), every
        segment ``l`` is compressed as its own vector with the seed
        ``segment_seed(seed, l)``, its payload written at ``layout.offsets[l]`` of one
        :class:`Reserved` buffer of ``layout.nbytes`` bytes (the bytes between payloads are
        the caller's: :class:`~choco.compress.PerTensor` writes segment headers there);
        ``flags`` is then every segment's. A codec with no batched kernel hands this to
        :func:`~choco.compress.layout.encode_each`.

        ``x`` is a flat floating-point tensor (any float dtype, any device) with
        ``1 <= x.numel() <= MAX_NUMEL``; ``seed`` is below ``2^64`` and keys all the
        randomness. ``flags`` fits in 16 bits. ``payload`` is a 1-D CPU uint8 tensor, or a
        :class:`Reserved` buffer whose payload was written in place (use
        :func:`payload_tensor` to read it as a tensor), of exactly
        ``_message_nbytes(x.numel(), flags) - HEADER_SIZE`` bytes. The same ``(payload, flags,
        seed)`` given to :meth:`decode_payload_add_` adds ``Q(x)``. Raises
        :class:`CompressionError` for input the format cannot carry (NaN, Inf, overflow).
        """

    @abstractmethod
    def decode_payload_add_(
        self, payload: torch.Tensor, flags: int, seed: int, out: torch.Tensor, alpha: float,
        layout: Layout | None = None,
    ) -> None:
        """Add ``alpha * Q(x)`` into the flat tensor ``out``, in place, from a payload.

        With a ``layout``, ``payload`` is the whole buffer :meth:`encode_payload` wrote for
        that layout and every segment's ``alpha * Q(x_l)`` is added to its part of ``out``
        (:func:`~choco.compress.layout.decode_each` for codecs with no batched kernel).

        ``payload`` (a 1-D CPU uint8 tensor), ``flags`` and ``seed`` are what
        :meth:`encode_payload` returned and was given for ``x``; ``out`` has ``x.numel()``
        elements, any float dtype, on any device. The caller has already checked the
        framing (:meth:`decode_add_` checks the header and the exact length); the decoder
        raises :class:`CompressionError` only for contents that do not decode (positions
        out of range).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def header_of(q: Compressor, buf: torch.Tensor) -> tuple[int, int, int]:
    """Check that ``buf`` is a message of ``q`` (magic, codec id, exact length) and return
    its header's ``(flags, numel, seed)``.

    A codec whose messages are framed differently (:class:`~choco.compress.PerTensor`)
    overrides the protected hook ``_read_header``.
    """
    return q._read_header(buf)


def message_nbytes(q: Compressor, numel: int, flags: int) -> int:
    """Exact length in bytes of a message of ``q`` whose header holds ``numel`` and
    ``flags``: ``q.nbytes(numel)`` unless the length depends on the flags (identity's dtype
    code), through the protected hook ``_message_nbytes`` a codec overrides for that."""
    return q._message_nbytes(numel, flags)


def decode(
    q: Compressor,
    buf: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode the message ``buf`` of ``q`` into a new flat tensor of ``dtype`` on ``device``:
    ``Q(x)`` added into zeros (:meth:`Compressor.decode_add_`)."""
    _, numel, _ = header_of(q, buf)
    out = torch.zeros(numel, dtype=dtype, device=device)
    return q.decode_add_(buf, out)


def is_raw(q: Compressor) -> bool:
    """Whether ``q`` is the unscaled unbiased form ``C`` (spec suffix ``:raw``), whose
    :meth:`~Compressor.delta` is ``1 - ω`` and may be ``<= 0``: not contractive, not for
    CHOCO. Equivalently ``q.unbiased and q.raw() is q``."""
    return q._raw


def check_finite(x: torch.Tensor, spec: str) -> None:
    """Raise unless every entry of ``x`` (a vector, a selection or a reduction) is finite.

    One reduction in the common case: a finite sum means no entry is NaN or Inf, so only a
    non-finite sum (NaN/Inf, or finite entries whose sum overflowed) is checked entry by entry.
    """
    if bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
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

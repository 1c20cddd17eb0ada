"""Message framing: the 16-byte header in front of every compressed message, and its checks.

A message is one flat CPU ``uint8`` buffer, the :data:`HEADER` then the compressor's payload;
its length is the number of bytes sent. The header is little-endian, without padding
(``struct`` format ``<BBHIQ``):

======  =====  ====================================================================
offset  bytes  field
======  =====  ====================================================================
0       1      magic byte :data:`MAGIC` (``0xC7``)
1       1      codec id, one per compressor family or combinator
2       2      flags, codec-specific (identity: the dtype code)
4       4      ``numel``, the length of the vector, ``1 <= numel <=`` :data:`MAX_NUMEL`
8       8      64-bit seed keying the message's randomness (rand-k positions, rounding)
======  =====  ====================================================================

The sender writes it with :func:`frame`; a receiver checks it with :func:`read_header`
(magic, codec, exact length) before it decodes anything. Every check raises
:class:`~choco.errors.CompressionError` with the compressor's spec in the message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..errors import CompressionError

#: ``<BBHIQ``: magic byte, codec id, flags (codec-specific), numel, 64-bit seed.
HEADER = struct.Struct("<BBHIQ")
HEADER_SIZE = HEADER.size
MAGIC = 0xC7
MAX_NUMEL = 2**31 - 1
#: seeds are taken modulo 2^64 (the header's seed field)
SEED_MASK = 0xFFFFFFFFFFFFFFFF
#: what a codec mismatch tells the user to fix
SAME_COMPRESSOR = "every node must use the same compressor"


class Header(NamedTuple):
    """The fields of a parsed :data:`HEADER` (the magic byte is checked, not returned)."""

    codec: int
    flags: int
    numel: int
    seed: int


class Reserved:
    """A host message buffer with room for the header, whose payload the encoder fills.

    An encoder that returns one instead of a payload tensor saves a copy of large payloads:
    :func:`frame` writes the header in front and returns the buffer itself.
    """

    __slots__ = ("buffer",)

    def __init__(self, payload_nbytes: int) -> None:
        self.buffer = np.empty(HEADER_SIZE + payload_nbytes, dtype=np.uint8)

    @property
    def payload(self) -> np.ndarray:
        """The payload part, a numpy view to write into."""
        return self.buffer[HEADER_SIZE:]


def payload_tensor(payload: torch.Tensor | Reserved) -> torch.Tensor:
    """The payload bytes of an encoder's result as a CPU uint8 tensor (no copy)."""
    return torch.from_numpy(payload.payload) if isinstance(payload, Reserved) else payload


# ---------------------------------------------------------------------------------- sender
def check_numel(numel: int, spec: str) -> None:
    """Raise unless a ``numel``-element vector fits in one message (``1 <= numel <= 2^31-1``)."""
    if numel < 1 or numel > MAX_NUMEL:
        raise CompressionError(
            f"{spec}: a vector with 1 <= numel <= {MAX_NUMEL} is required, got "
            f"numel={numel}; split larger models into per-tensor segments."
        )


def pack_header(codec: int, flags: int, numel: int, seed: int) -> bytes:
    """The :data:`HEADER_SIZE` header bytes of a message (``seed`` already below 2^64)."""
    return HEADER.pack(MAGIC, codec, flags, numel, seed)


def frame(
    payload: torch.Tensor | Reserved, codec: int, flags: int, numel: int, seed: int
) -> torch.Tensor:
    """The message: header then ``payload``, as one CPU ``uint8`` tensor.

    A :class:`Reserved` payload is framed in place (its buffer becomes the message); a
    tensor payload is copied behind the header.
    """
    if isinstance(payload, Reserved):  # the header is written into the buffer in place
        HEADER.pack_into(payload.buffer.data, 0, MAGIC, codec, flags, numel, seed)
        return torch.from_numpy(payload.buffer)
    header = torch.frombuffer(bytearray(pack_header(codec, flags, numel, seed)),
                              dtype=torch.uint8)
    out = torch.empty(HEADER_SIZE + len(payload), dtype=torch.uint8)
    if len(payload):
        out[HEADER_SIZE:] = payload
    out[:HEADER_SIZE] = header
    return out


def check_encoded_length(message: torch.Tensor, expected: int, numel: int, spec: str) -> None:
    """Raise ``RuntimeError`` if an encoder produced a message of the wrong length.

    That is a bug in the compressor (its format and its encoder disagree), not a user error.
    """
    if message.numel() != expected:
        raise RuntimeError(
            f"{spec}: encoded {message.numel()} bytes for numel={numel}, but the format "
            f"says {expected}"
        )


# ---------------------------------------------------------------------------------- receiver
def parse_header(buf: torch.Tensor, spec: str = "message") -> Header:
    """Read the :data:`HEADER` at the start of ``buf``: ``(codec, flags, numel, seed)``.

    Checks that ``buf`` is a 1-D uint8 tensor long enough for a header and that the magic
    byte matches; the codec and the length are checked by :func:`read_header`.
    """
    if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() < HEADER_SIZE:
        raise CompressionError(
            f"{spec}: a 1-D uint8 buffer of at least {HEADER_SIZE} bytes is required, "
            f"got dtype {buf.dtype} shape {tuple(buf.shape)}."
        )
    head = buf.numpy() if buf.is_contiguous() else buf[:HEADER_SIZE].contiguous().numpy()
    magic, codec, flags, numel, seed = HEADER.unpack_from(head.data)  # no copy of the message
    if magic != MAGIC:
        raise CompressionError(f"{spec}: bad magic byte {magic:#x}; not a choco message")
    return Header(codec, flags, numel, seed)


def check_codec(codec: int, expected: int, spec: str, fix: str = SAME_COMPRESSOR) -> None:
    """Raise unless the header's ``codec`` is the ``expected`` one (``fix``: the advice)."""
    if codec != expected:
        advice = f"; {fix}." if fix else ""
        raise CompressionError(f"{spec}: buffer has codec {codec}, expected {expected}{advice}")


def check_length(buf: torch.Tensor, expected: int, numel: int, spec: str) -> None:
    """Raise unless ``buf`` (a ``numel``-element message) is exactly ``expected`` bytes."""
    if buf.numel() != expected:
        raise CompressionError(
            f"{spec}: a {numel}-element message is {expected} bytes, got "
            f"{buf.numel()}; the buffer was truncated or produced by another version."
        )


def read_header(
    buf: torch.Tensor, codec: int, spec: str, message_nbytes: Callable[[int, int], int]
) -> tuple[int, int, int]:
    """Check a whole message and return its ``(flags, numel, seed)``.

    ``buf`` must hold a valid header (:func:`parse_header`) of codec ``codec`` and be exactly
    ``message_nbytes(numel, flags)`` bytes long.
    """
    header = parse_header(buf, spec)
    check_codec(header.codec, codec, spec)
    check_length(buf, message_nbytes(header.numel, header.flags), header.numel, spec)
    return header.flags, header.numel, header.seed


__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_NUMEL",
    "SAME_COMPRESSOR",
    "SEED_MASK",
    "Header",
    "Reserved",
    "check_codec",
    "check_encoded_length",
    "check_length",
    "check_numel",
    "frame",
    "pack_header",
    "parse_header",
    "payload_tensor",
    "read_header",
]

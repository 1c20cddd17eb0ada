"""Bit packing for the wire: sign bits and fixed-width unsigned fields.

Bits are packed LSB-first within each byte (bit ``i`` of the stream is bit ``i % 8`` of byte
``i // 8``), the order of ``numpy.packbits(..., bitorder="little")``. A ``width``-bit field
``i`` occupies stream bits ``[i*width, (i+1)*width)``, least significant bit first.

Packing runs on the tensor's device; only the packed bytes move to the host. On CPU the numpy
kernels are used, which are several times faster than eager torch. Fixed-width fields are
packed eight at a time: eight ``width``-bit fields fill exactly ``width`` bytes, so each output
byte is an OR of at most three shifted fields (about ``2 * width`` vector operations on
``n / 8`` elements, with no per-bit expansion).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_BIT_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _weights(device: torch.device) -> torch.Tensor:
    w = _BIT_WEIGHTS.get(device)
    if w is None:
        w = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=device)
        _BIT_WEIGHTS[device] = w
    return w


def packed_nbytes(nbits: int) -> int:
    """Bytes that hold ``nbits`` bits: ``ceil(nbits / 8)``."""
    return (nbits + 7) // 8


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a 1-D bool tensor into ``ceil(n/8)`` CPU ``uint8`` bytes, LSB-first."""
    if bits.device.type == "cpu":
        packed = np.packbits(bits.numpy(), bitorder="little")
        return torch.from_numpy(packed)
    return pack_bits_torch(bits)


def pack_bits_torch(bits: torch.Tensor) -> torch.Tensor:
    """:func:`pack_bits` with torch ops on ``bits``' device (the CUDA path)."""
    n = bits.numel()
    pad = (-n) % 8
    b = bits.to(torch.uint8)
    if pad:
        b = torch.cat([b, b.new_zeros(pad)])
    packed = (b.view(-1, 8) * _weights(b.device)).sum(dim=1, dtype=torch.uint8)
    return packed.cpu()


def unpack_bits(packed: torch.Tensor, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as a bool tensor on ``device``."""
    device = torch.device(device)
    if device.type == "cpu":
        bits = np.unpackbits(packed.numpy(), count=n, bitorder="little")
        return torch.from_numpy(bits).view(torch.bool)
    return unpack_bits_torch(packed, n, device)


def unpack_bits_torch(packed: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """:func:`unpack_bits` with torch ops on ``device`` (the CUDA path)."""
    p = packed.to(device)
    bits = (p.view(-1, 1) & _weights(device)).ne(0).view(-1)
    return bits[:n]


def _check_width(width: int) -> None:
    if not 1 <= width <= 32:
        raise ValueError(f"a field width in [1, 32] is required, got {width}")


def _byte_terms(width: int, byte: int) -> list[tuple[int, int]]:
    """``(field j, shift)`` pairs covering output byte ``byte`` of a group of 8 fields.

    ``shift > 0`` means the field is shifted left into the byte, ``< 0`` right.
    """
    lo = 8 * byte
    return [(j, width * j - lo) for j in range(8) if width * j < lo + 8 and width * (j + 1) > lo]


def pack_groups(values: Any, width: int, out: Any) -> Any:
    """Pack ``values`` (shape ``(G, 8)``, signed ints wide enough for ``v << 7``) into ``out``.

    ``out`` has shape ``(G, width)`` and dtype uint8. Works on numpy arrays and torch
    tensors alike (only ``<<``, ``>>``, ``|``, ``&`` and slicing are used).
    """
    for b in range(width):
        acc: Any = None
        for j, shift in _byte_terms(width, b):
            col = values[:, j]
            term = col << shift if shift >= 0 else col >> -shift
            acc = term if acc is None else acc | term
        out[:, b] = acc & 0xFF
    return out


def unpack_groups(data: Any, width: int, out: Any) -> Any:
    """Inverse of :func:`pack_groups`: ``data`` ``(G, width)`` signed ints, ``out`` ``(G, 8)``."""
    mask = (1 << width) - 1
    for j in range(8):
        acc: Any = None
        for b in range(width):
            shift = width * j - 8 * b  # field bit 0 sits at bit `shift` of byte b
            if shift >= 8 or shift + width <= 0:
                continue
            col = data[:, b]
            term = col >> shift if shift >= 0 else col << -shift
            acc = term if acc is None else acc | term
        out[:, j] = acc & mask
    return out


def pack_uint_numpy(values: np.ndarray, width: int) -> np.ndarray:
    """:func:`pack_uint` for a numpy array: ``ceil(n*width/8)`` bytes."""
    _check_width(width)
    n = values.size
    groups = -(-n // 8)
    wide = np.int32 if width <= 24 else np.int64
    v = np.zeros((groups, 8), dtype=wide)
    v.reshape(-1)[:n] = values.reshape(-1)
    out = np.empty((groups, width), dtype=np.uint8)
    pack_groups(v, width, out)
    return out.reshape(-1)[: packed_nbytes(n * width)]


def unpack_uint_numpy(packed: np.ndarray, n: int, width: int) -> np.ndarray:
    """:func:`unpack_uint` into a numpy array (int32 for ``width <= 24``, else int64)."""
    _check_width(width)
    groups = -(-n // 8)
    wide = np.int32 if width <= 24 else np.int64
    data = np.zeros((groups, width), dtype=wide)
    data.reshape(-1)[: packed_nbytes(n * width)] = packed[: packed_nbytes(n * width)]
    out = np.empty((groups, 8), dtype=wide)
    unpack_groups(data, width, out)
    return out.reshape(-1)[:n]


def pack_uint(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integers ``< 2**width`` into a little-endian bit stream.

    Element ``i`` occupies stream bits ``[i*width, (i+1)*width)``, least significant first.
    Returns ``ceil(n*width/8)`` CPU bytes; packing runs on ``values``' device.
    """
    _check_width(width)
    if values.device.type == "cpu":
        return torch.from_numpy(pack_uint_numpy(values.reshape(-1).numpy(), width))
    return pack_uint_torch(values, width)


def pack_uint_torch(values: torch.Tensor, width: int) -> torch.Tensor:
    """:func:`pack_uint` with torch ops on ``values``' device (the CUDA path)."""
    _check_width(width)
    n = values.numel()
    groups = -(-n // 8)
    wide = torch.int32 if width <= 24 else torch.int64
    v = torch.zeros(groups * 8, dtype=wide, device=values.device)
    v[:n] = values.reshape(-1)
    out = torch.empty((groups, width), dtype=wide, device=values.device)
    pack_groups(v.view(groups, 8), width, out)
    return out.to(torch.uint8).reshape(-1)[: packed_nbytes(n * width)].cpu()


def unpack_uint(
    packed: torch.Tensor, n: int, width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Inverse of :func:`pack_uint`: ``n`` integers (int64) on ``device``."""
    _check_width(width)
    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(unpack_uint_numpy(packed.numpy(), n, width).astype(np.int64))
    return unpack_uint_torch(packed, n, width, device)


def unpack_uint_torch(
    packed: torch.Tensor, n: int, width: int, device: torch.device | str
) -> torch.Tensor:
    """:func:`unpack_uint` with torch ops on ``device`` (the CUDA path)."""
    _check_width(width)
    device = torch.device(device)
    groups = -(-n // 8)
    nbytes = packed_nbytes(n * width)
    data = torch.zeros(groups * width, dtype=torch.int64, device=device)
    data[:nbytes] = packed[:nbytes].to(device)
    out = torch.empty((groups, 8), dtype=torch.int64, device=device)
    unpack_groups(data.view(groups, width), width, out)
    return out.reshape(-1)[:n]

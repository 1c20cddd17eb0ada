"""Bit packing for the wire: sign bits, fixed-width unsigned fields.

Bits are packed LSB-first within each byte (bit ``i`` of the stream is bit ``i % 8`` of byte
``i // 8``), the order of ``numpy.packbits(..., bitorder="little")``. Packing runs on the
tensor's device; only the packed bytes move to the host. On CPU the numpy kernels are used,
which are several times faster than eager torch.
"""

from __future__ import annotations

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
    p = packed.to(device)
    bits = (p.view(-1, 1) & _weights(device)).ne(0).view(-1)
    return bits[:n]


def pack_uint(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integers ``< 2**width`` into a little-endian bit stream.

    Element ``i`` occupies stream bits ``[i*width, (i+1)*width)``, least significant first.
    Returns ``ceil(n*width/8)`` CPU bytes.
    """
    if not 1 <= width <= 32:
        raise ValueError(f"a field width in [1, 32] is required, got {width}")
    v = values.reshape(-1).to(torch.int64)
    shifts = torch.arange(width, device=v.device, dtype=torch.int64)
    bits = ((v.view(-1, 1) >> shifts) & 1).to(torch.bool).view(-1)
    return pack_bits(bits)


def unpack_uint(
    packed: torch.Tensor, n: int, width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Inverse of :func:`pack_uint`: ``n`` integers (int64) on ``device``."""
    bits = unpack_bits(packed, n * width, device).view(n, width).to(torch.int64)
    shifts = torch.arange(width, device=bits.device, dtype=torch.int64)
    return (bits << shifts).sum(dim=1)

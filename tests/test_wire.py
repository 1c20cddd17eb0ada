"""Bit packing: LSB-first order, round trips, sizes, host and device code paths agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from choco import wire


def reference_pack(values: np.ndarray, width: int) -> np.ndarray:
    """Plain per-bit packing: field i occupies stream bits [i*width, (i+1)*width), LSB first."""
    bits = [(int(v) >> b) & 1 for v in values for b in range(width)]
    return np.packbits(np.array(bits, dtype=np.uint8), bitorder="little")


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 1000])
def test_pack_bits_lsb_first(n):
    rng = np.random.default_rng(n)
    bits = rng.random(n) < 0.5
    packed = wire.pack_bits(torch.from_numpy(bits))
    assert packed.numel() == wire.packed_nbytes(n) == -(-n // 8)
    for i in range(n):
        assert bool((int(packed[i // 8]) >> (i % 8)) & 1) == bits[i]
    assert torch.equal(wire.unpack_bits(packed, n), torch.from_numpy(bits))


@pytest.mark.parametrize("width", [1, 2, 3, 5, 6, 8, 9, 13, 17, 24, 25, 31, 32])
@pytest.mark.parametrize("n", [1, 5, 8, 17, 260])
def test_pack_uint_matches_bitwise_reference(width, n):
    rng = np.random.default_rng(width * 1000 + n)
    values = rng.integers(0, 2**width, size=n, dtype=np.int64)
    values[0] = 2**width - 1  # all ones
    packed = wire.pack_uint(torch.from_numpy(values), width)
    assert packed.numel() == wire.packed_nbytes(n * width)
    assert np.array_equal(packed.numpy(), reference_pack(values, width))
    back = wire.unpack_uint(packed, n, width)
    assert back.dtype == torch.int64
    assert np.array_equal(back.numpy(), values)


@pytest.mark.parametrize("width", [1, 4, 6, 11, 24, 30])
def test_torch_path_matches_numpy_path(width):
    """The torch code path (what CUDA runs), exercised on CPU, gives the same bytes."""
    rng = np.random.default_rng(width)
    n = 123
    values = torch.from_numpy(rng.integers(0, 2**width, size=n, dtype=np.int64))
    host = wire.pack_uint(values, width)
    assert torch.equal(wire.pack_uint_torch(values, width), host)
    assert torch.equal(wire.unpack_uint_torch(host, n, width, "cpu"), values)
    bits = values % 2 == 1
    packed = wire.pack_bits(bits)
    assert torch.equal(wire.pack_bits_torch(bits), packed)
    assert torch.equal(wire.unpack_bits_torch(packed, n, torch.device("cpu")), bits)


def test_bad_width_raises():
    with pytest.raises(ValueError, match="width"):
        wire.pack_uint(torch.zeros(3, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match="width"):
        wire.unpack_uint(torch.zeros(3, dtype=torch.uint8), 2, 33)

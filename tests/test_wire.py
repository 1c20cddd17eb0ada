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


@pytest.mark.parametrize("d,k", [(1, 1), (10, 10), (100, 1), (1000, 10), (50, 25),
                                 (1_000_000, 10_000), (100_000, 100)])
def test_rice_round_trip_and_fixed_size(d, k):
    rng = np.random.default_rng(d + k)
    positions = np.sort(rng.choice(d, k, replace=False))
    b = wire.rice_parameter(k / d)
    buf = wire.rice_encode(positions, d, b)
    assert buf.size == wire.rice_nbytes(k, d, b)
    np.testing.assert_array_equal(wire.rice_decode(buf, k, d, b), positions)
    # worst case for the bound: the last k positions (one long first gap)
    tail = np.arange(d - k, d)
    np.testing.assert_array_equal(wire.rice_decode(wire.rice_encode(tail, d, b), k, d, b), tail)


def test_rice_parameters_and_cost_match_sbc():
    """b* = 3 / 6 / 9 at p = 10% / 1% / 0.1%; about 8.5 bits per position.

    The Golomb-Rice parameter of SBC (arXiv:1805.08768); see docs/compressors.md.
    """
    assert [wire.rice_parameter(p) for p in (0.1, 0.01, 0.001)] == [3, 6, 9]
    assert wire.rice_parameter(0.7) == 0
    k, d = 10_000, 1_000_000
    assert 8 * wire.rice_nbytes(k, d, 6) / k == pytest.approx(8.55, abs=0.01)


def test_rice_rejects_corrupt_streams():
    buf = wire.rice_encode(np.array([3, 7, 9]), 10, 1)
    with pytest.raises(ValueError, match="positions"):
        wire.rice_decode(buf, 4, 10, 1)
    with pytest.raises(ValueError, match=">="):
        wire.rice_decode(buf, 3, 8, 1)

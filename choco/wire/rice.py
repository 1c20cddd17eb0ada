"""Rice coding of sorted positions (the support of top-k), in a fixed-size buffer.

Rice coding follows Sattler et al., SBC (arXiv:1805.08768): the gaps between ascending
positions of a density-``p`` support are nearly geometric, and the Golomb-optimal power-of-two
parameter ``b*`` codes each in ``b*`` remainder bits plus a unary quotient of about
``1 + (1/p - 1) / 2^b*`` bits (8.55 bits per position at ``p = 1%``).
"""

from __future__ import annotations

import numpy as np

from .bits import pack_uint_numpy, packed_nbytes, unpack_uint_numpy

_PHI = (1 + 5**0.5) / 2


def rice_parameter(p: float) -> int:
    """Rice parameter ``b* = 1 + floor(log2(ln(φ - 1) / ln(1 - p)))`` for gaps of a density-``p``
    support (the Golomb-optimal choice for geometric gaps, Sattler et al., SBC,
    arXiv:1805.08768); 0 for ``p >= 1/2``."""
    if p >= 0.5:
        return 0
    return max(0, 1 + int(np.floor(np.log2(np.log(_PHI - 1) / np.log1p(-p)))))


def rice_nbits_bound(k: int, d: int, b: int) -> tuple[int, int]:
    """(remainder bits, unary bits) of ``k`` ascending positions in ``range(d)``: ``k b`` and
    at most ``k + floor((d - k) / 2^b)``, since the gaps sum to at most ``d - k``."""
    return k * b, k + (d - k) // (1 << b)


def rice_nbytes(k: int, d: int, b: int) -> int:
    """Fixed size of a Rice-coded support: the bound of :func:`rice_nbits_bound`, in bytes."""
    rem, unary = rice_nbits_bound(k, d, b)
    return packed_nbytes(rem) + packed_nbytes(unary)


def rice_encode(positions: np.ndarray, d: int, b: int) -> np.ndarray:
    """Rice-code ascending distinct ``positions`` (gaps ``g_i = p_i - p_{i-1} - 1``).

    Split-stream layout, both LSB-first: ``k`` remainders ``g mod 2^b`` of ``b`` bits, then
    the quotients ``g >> b`` in unary (``q`` zeros, then a one), zero-padded to the bound of
    :func:`rice_nbytes` so that the buffer has a fixed size.
    """
    k = positions.size
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    rem_bits, unary_bits = rice_nbits_bound(k, d, b)
    out = np.zeros(rice_nbytes(k, d, b), dtype=np.uint8)
    if b:
        rem = pack_uint_numpy(gaps & ((1 << b) - 1), b)
        out[: rem.size] = rem
    ones = np.cumsum((gaps >> b) + 1) - 1  # stream index of each terminating one
    unary = np.zeros(unary_bits, dtype=bool)
    unary[ones] = True
    packed = np.packbits(unary, bitorder="little")
    out[packed_nbytes(rem_bits) :][: packed.size] = packed
    return out


def rice_decode(buf: np.ndarray, k: int, d: int, b: int) -> np.ndarray:
    """Inverse of :func:`rice_encode`: ``k`` ascending positions (int64); raises
    ``ValueError`` if the buffer does not hold ``k`` positions below ``d``."""
    rem_bits, unary_bits = rice_nbits_bound(k, d, b)
    rem_bytes = packed_nbytes(rem_bits)
    unary = np.unpackbits(buf[rem_bytes:], count=unary_bits, bitorder="little")
    ones = np.flatnonzero(unary)
    if ones.size != k:
        raise ValueError(f"Rice stream holds {ones.size} positions, expected {k}")
    quotients = np.diff(ones, prepend=-1) - 1
    rem = unpack_uint_numpy(buf[:rem_bytes], k, b).astype(np.int64) if b else 0
    positions = np.cumsum((quotients << b) + rem + 1) - 1
    if k and positions[-1] >= d:
        raise ValueError(f"Rice stream decodes to position {positions[-1]} >= {d}")
    return positions

"""Rice coding of sorted positions (the support of top-k), in a fixed-size buffer.

Rice coding follows Sattler et al., SBC (arXiv:1805.08768): the gaps between ascending
positions of a density-``p`` support are nearly geometric, and the Golomb-optimal power-of-two
parameter ``b*`` codes each in ``b*`` remainder bits plus a unary quotient of about
``1 + (1/p - 1) / 2^b*`` bits (8.55 bits per position at ``p = 1%``).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    gaps: np.ndarray = np.diff(positions.astype(np.int64), prepend=-1) - 1
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


# ------------------------------------------------------------------ several codes at once
@dataclass(eq=False)
class RiceStreams:
    """Where the codes of several supports sit in one bit stream (:func:`rice_streams`).

    Support ``l`` has ``k_l`` positions below ``d_l`` and parameter ``b_l``; its code is
    :func:`rice_encode`'s (remainders, then unary, each padded to a byte), and the codes
    follow each other. Arrays with one entry per position are grouped by support.
    """

    k: np.ndarray
    nbytes: np.ndarray  # bytes of each support's code
    nbits: int  # bits of the whole stream
    b: np.ndarray  # per position
    first: np.ndarray  # per position: index of its support's first position
    rem_entry: np.ndarray  # per remainder bit: its position
    rem_shift: np.ndarray  # per remainder bit: its bit in the remainder
    rem_bit: np.ndarray  # per remainder bit: its place in the stream
    unary_base: np.ndarray  # per position: stream bit where its support's unary part starts
    unary_mask: np.ndarray  # per stream bit: 1 in unary parts
    unary_bounds: np.ndarray  # stream bit of each unary part's start, then the end


def rice_streams(k: np.ndarray, d: np.ndarray, b: np.ndarray) -> RiceStreams:
    """Plan the codes of supports of ``k_l`` positions in ``range(d_l)`` with ``b_l``."""
    rem_bits = k * b  # rice_nbits_bound of every support
    unary_bits = k + (d - k) // (1 << b)
    rem_bytes = (rem_bits + 7) // 8
    code_bytes = rem_bytes + (unary_bits + 7) // 8
    base = np.cumsum(code_bytes) - code_bytes  # byte offset of each code in the stream
    nbits = 8 * int(code_bytes.sum())
    within = _arange_within(k)
    nb = np.repeat(b, k)  # remainder bits: entry e, bit t at rem base + b j + t
    rem_shift = _arange_within(nb)
    seg_of = np.repeat(np.arange(k.size), k)
    unary_mask = np.zeros(nbits, dtype=np.uint8)
    for j in range(k.size):
        lo = 8 * int(base[j] + rem_bytes[j])
        unary_mask[lo : lo + int(unary_bits[j])] = 1
    return RiceStreams(
        k=k, nbytes=code_bytes, nbits=nbits, b=nb, first=np.repeat(np.cumsum(k) - k, k),
        rem_entry=np.repeat(np.arange(k.sum()), nb), rem_shift=rem_shift,
        rem_bit=np.repeat(8 * base[seg_of] + within * nb, nb) + rem_shift,
        unary_base=np.repeat(8 * (base + rem_bytes), k), unary_mask=unary_mask,
        unary_bounds=np.concatenate([8 * (base + rem_bytes), [nbits]]),
    )


def rice_encode_streams(local: np.ndarray, plan: RiceStreams) -> np.ndarray:
    """The bytes of every support's code, one after the other; ``local`` holds each
    support's ascending positions, support after support."""
    b, first = plan.b, plan.first
    gaps = np.diff(local, prepend=-1) - 1
    is_first = first == np.arange(gaps.size)
    gaps[is_first] = local[is_first]
    bits = np.zeros(plan.nbits, dtype=np.uint8)
    bits[plan.rem_bit] = (gaps[plan.rem_entry] >> plan.rem_shift) & 1
    steps = np.cumsum((gaps >> b) + 1)
    before = np.where(first > 0, steps[first - 1], 0)
    bits[plan.unary_base + steps - before - 1] = 1
    return np.packbits(bits, bitorder="little")


def rice_decode_streams(codes: np.ndarray, plan: RiceStreams) -> np.ndarray | None:
    """Inverse of :func:`rice_encode_streams`: every support's positions, or None if a
    code does not hold exactly ``k_l`` positions (bounds are the caller's to check)."""
    bits = np.unpackbits(codes, bitorder="little")
    ones = np.flatnonzero(bits & plan.unary_mask)
    if ones.size != plan.k.sum() or not np.array_equal(
        np.diff(np.searchsorted(ones, plan.unary_bounds)), plan.k
    ):
        return None
    b, first = plan.b, plan.first
    quotients = np.diff(ones, prepend=0) - 1
    is_first = first == np.arange(ones.size)
    quotients[is_first] = ones[is_first] - plan.unary_base[is_first]
    rem = np.zeros(ones.size, dtype=np.int64)
    if plan.rem_bit.size:
        rem = np.bincount(plan.rem_entry,
                          weights=bits[plan.rem_bit].astype(np.int64) << plan.rem_shift,
                          minlength=ones.size).astype(np.int64)
    steps = np.cumsum((quotients << b) + rem + 1)
    return steps - np.where(first > 0, steps[first - 1], 0) - 1


def _arange_within(lengths: np.ndarray) -> np.ndarray:
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) - firsts

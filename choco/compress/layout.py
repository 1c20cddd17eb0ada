"""Segment layouts: the one shape every host codec takes (a flat vector is one segment).

A :class:`Layout` is a flat vector cut into consecutive segments of sizes ``d_l`` (the
tensors of a model, arXiv:1907.09356 §5 compresses each on its own) together with the place
of each segment's payload in one message buffer: segment ``l``'s payload starts at byte
``offsets[l]`` and is ``payload_nbytes(d_l)`` long; the bytes between payloads (the segment
headers of :class:`~choco.compress.PerTensor`) belong to the framing. Segment ``l``'s
randomness is keyed by ``segment_seed(seed, l)`` (splitmix64, :func:`segment_seeds`).

A codec with a batched host kernel codes the segments shorter than :data:`BATCH_MAX` in
blocks of at most :data:`BATCH_MAX` elements (a handful of whole-block numpy passes instead
of a Python round trip per tensor) and the longer ones, and a flat vector, alone with its
chunked vector kernel;
:meth:`Layout.items` cuts a layout into those blocks and segments, once per codec. A codec
without one codes each segment alone (:func:`encode_each`, :func:`decode_each`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..wire.framing import HEADER_SIZE, Reserved, payload_tensor

#: segments with at least this many elements are coded alone (the codec's chunked vector
#: kernel); shorter ones are batched in blocks of at most this many elements
BATCH_MAX = 1 << 20

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ONE, _S31 = np.uint64(1), np.uint64(31)
_MIX = ((np.uint64(30), np.uint64(0xBF58476D1CE4E5B9)),
        (np.uint64(27), np.uint64(0x94D049BB133111EB)))


def segment_seeds(seed: int, indices: np.ndarray) -> np.ndarray:
    """The seed of every segment in ``indices``, as ``uint64`` (arithmetic modulo 2^64).

    ``z = seed + φ (i + 1)``, ``z = (z ⊕ z >> 30) · c1``, ``z = (z ⊕ z >> 27) · c2``,
    ``z ⊕ z >> 31`` (splitmix64, ``φ = 0x9E3779B97F4A7C15``).
    """
    # in place on one 1-d array (array arithmetic wraps modulo 2^64 without warnings; a 0-d
    # array would turn into numpy scalars, which warn): it runs on every per-tensor message
    z = np.array(indices, dtype=np.uint64, ndmin=1)
    z += _ONE
    z *= _GOLDEN
    z += np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    for shift, mul in _MIX:
        z ^= z >> shift
        z *= mul
    z ^= z >> _S31
    return z


def segment_seed(seed: int, index: int) -> int:
    """A distinct 64-bit seed for segment ``index`` (:func:`segment_seeds` of one index)."""
    return int(segment_seeds(seed, np.array([index]))[0])


def arange_within(lengths: np.ndarray) -> np.ndarray:
    """``[0, …, n_0 - 1, 0, …, n_1 - 1, …]``: the index of each item inside its group."""
    total = int(lengths.sum())
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - firsts


@dataclass(eq=False)
class Block:
    """Consecutive segments ``lo … hi-1`` coded together by a batched kernel.

    ``elem`` is the block's first element in the vector, ``byte`` its first segment's
    payload offset in the buffer; ``starts`` (elements) and ``offsets`` (payload bytes) are
    relative to them. ``plan`` holds what the kernel precomputed for the block.
    """

    lo: int
    hi: int
    elem: int
    byte: int
    stop: int
    sizes: np.ndarray
    offsets: np.ndarray
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return int(self.sizes.sum())

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.sizes) - self.sizes

    @property
    def bounds(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])


@dataclass(frozen=True)
class Alone:
    """Segment ``index`` coded alone: elements ``elem …`` and payload bytes ``byte … stop``."""

    index: int
    elem: int
    size: int
    byte: int
    stop: int


Item = Block | Alone


@dataclass(eq=False)
class Layout:
    """Segments ``sizes`` of a flat vector and their payloads' places in one buffer."""

    sizes: np.ndarray
    offsets: np.ndarray
    payload_sizes: np.ndarray
    nbytes: int
    #: whether segment seeds are derived from the message seed (framed segments) or the
    #: one segment uses the seed itself (a flat vector)
    derived_seeds: bool = True
    _items: dict[str, list[Item]] = field(default_factory=dict, repr=False)

    @staticmethod
    def framed(sizes: Sequence[int], payload_nbytes: Callable[[int], int]) -> Layout:
        """Segments each preceded by a :data:`~choco.wire.framing.HEADER_SIZE` header."""
        sz = np.array([int(s) for s in sizes], dtype=np.int64)
        lengths = np.array([payload_nbytes(int(s)) for s in sz], dtype=np.int64)
        ends = np.cumsum(lengths + HEADER_SIZE)
        return Layout(sz, ends - lengths, lengths, int(ends[-1]) if sz.size else 0)

    @property
    def count(self) -> int:
        return int(self.sizes.size)

    @property
    def numel(self) -> int:
        return int(self.sizes.sum())

    @property
    def elems(self) -> np.ndarray:
        """First element of every segment."""
        return np.cumsum(self.sizes) - self.sizes

    def seeds(self, seed: int) -> np.ndarray:
        """Every segment's seed (:func:`segment_seeds`); a flat vector keeps ``seed``."""
        if not self.derived_seeds:
            return np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
        return segment_seeds(seed, np.arange(self.count))

    def items(self, key: str, alone: Callable[[np.ndarray], np.ndarray] | None,
              prepare: Callable[[Block], None]) -> list[Item]:
        """The layout cut into batched :class:`Block` s and :class:`Alone` segments for the
        kernel ``key`` (built once per key): segments where ``alone(sizes)`` is set or at least
        :data:`BATCH_MAX` long, and the segment of a one-segment layout (a flat vector), are
        alone; runs of the others form blocks of at most :data:`BATCH_MAX` elements, each
        prepared by ``prepare``."""
        cached = self._items.get(key)
        if cached is not None:
            return cached
        sizes, elems = self.sizes, self.elems
        big = (sizes >= BATCH_MAX) | (sizes.size == 1)  # nothing to batch in one segment
        if alone is not None:
            big = big | alone(sizes)
        ends = self.offsets + self.payload_sizes
        items: list[Item] = []
        lo = 0
        while lo < sizes.size:
            if big[lo]:
                items.append(Alone(lo, int(elems[lo]), int(sizes[lo]), int(self.offsets[lo]),
                                   int(ends[lo])))
                lo += 1
                continue
            hi, total = lo, 0
            while hi < sizes.size and not big[hi] and total + sizes[hi] <= BATCH_MAX:
                total += int(sizes[hi])
                hi += 1
            byte = int(self.offsets[lo])
            block = Block(lo, hi, int(elems[lo]), byte, int(ends[hi - 1]), sizes[lo:hi],
                          self.offsets[lo:hi] - byte)
            prepare(block)
            items.append(block)
            lo = hi
        self._items[key] = items
        return items


@lru_cache(maxsize=256)
def _flat(numel: int, payload_nbytes: int) -> Layout:
    return Layout(np.array([numel], dtype=np.int64), np.zeros(1, dtype=np.int64),
                  np.array([payload_nbytes], dtype=np.int64), payload_nbytes, derived_seeds=False)


def flat(numel: int, payload_nbytes: int) -> Layout:
    """The layout of one flat vector: one segment, its payload at byte 0 (cached)."""
    return _flat(int(numel), int(payload_nbytes))


def check_payload(spec: str, got: int, expected: int, numel: int) -> None:
    """Raise ``RuntimeError`` if a segment's payload is not the length its layout says
    (a bug in the codec, or a dtype whose messages are longer than fp32 ones)."""
    if got != expected:
        raise RuntimeError(
            f"{spec}: encoded {got + HEADER_SIZE} bytes for numel={numel}, but the format "
            f"says {expected + HEADER_SIZE}"
        )


def encode_each(codec: Any, x: torch.Tensor, seed: int, layout: Layout) -> tuple[int, Reserved]:
    """Code every segment alone with ``codec.encode_payload`` and its segment seed, into
    one buffer laid out as ``layout`` says (the shared path of codecs without a batched
    kernel, and of every codec off the host); returns ``(flags, buffer)``."""
    message = Reserved(layout.nbytes)
    out = message.payload
    seeds = layout.seeds(seed)
    flags = 0
    for i, (elem, size) in enumerate(zip(layout.elems.tolist(), layout.sizes.tolist(),
                                         strict=True)):
        flags, part = codec.encode_payload(x[elem : elem + size], int(seeds[i]))
        data = payload_tensor(part).numpy()
        at = int(layout.offsets[i])
        check_payload(codec.spec, data.size, int(layout.payload_sizes[i]), size)
        out[at : at + data.size] = data
    return flags, message


def decode_each(codec: Any, payload: torch.Tensor, flags: int, seed: int, out: torch.Tensor,
                alpha: float, layout: Layout) -> None:
    """Add every segment's ``alpha Q(x_l)`` with ``codec.decode_payload_add_`` (the shared
    decoding path of :func:`encode_each`)."""
    seeds = layout.seeds(seed)
    for i, (elem, size) in enumerate(zip(layout.elems.tolist(), layout.sizes.tolist(),
                                         strict=True)):
        at = int(layout.offsets[i])
        codec.decode_payload_add_(payload[at : at + int(layout.payload_sizes[i])], flags,
                                  int(seeds[i]), out[elem : elem + size], alpha)


# ------------------------------------------------------------------ sign bits of a block
def plan_sign_bits(block: Block, first: np.ndarray) -> None:
    """Plan the sign bytes of every segment: ``ceil(d_l/8)`` bytes from byte ``first[l]``.

    Bit ``t`` of byte ``j`` of segment ``l`` is ``[x_{s_l + 8 j + t} < 0]`` (LSB-first, zero
    padding bits), ``s_l`` the segment's first element. Every byte is cut out of the packed
    bits of the whole block with a shift (its start bit mod 8) and a mask (its valid bits);
    decoding copies runs of segments whose bits sit at a constant offset in the padded stream.
    """
    sizes, starts = block.sizes, block.starts
    nsign = (sizes + 7) // 8
    byte_in_seg = arange_within(nsign)
    bit = np.repeat(starts, nsign) + 8 * byte_in_seg  # first stream bit of each byte
    valid = np.minimum(np.repeat(starts + sizes, nsign) - bit, 8)
    block.plan["sign"] = np.repeat(first, nsign) + byte_in_seg
    block.plan["src"] = bit // 8
    shift = (bit % 8).astype(np.uint16)
    block.plan["shift"] = shift if shift.any() else None
    block.plan["mask"] = ((1 << valid) - 1).astype(np.uint16)
    padded = 8 * (np.cumsum(nsign) - nsign)
    runs: list[list[int]] = []
    for j in range(sizes.size):
        a, b, p = int(starts[j]), int(starts[j] + sizes[j]), int(padded[j])
        if runs and runs[-1][2] - runs[-1][0] == p - a:
            runs[-1][1] = b
        else:
            runs.append([a, b, p])
    block.plan["runs"] = runs


def pack_sign_bits(negative: np.ndarray, plan: dict[str, Any], payload: np.ndarray) -> None:
    """Write the sign bytes planned by :func:`plan_sign_bits` of the block's ``x < 0``."""
    packed = np.packbits(negative, bitorder="little")
    src = plan["src"]
    if plan["shift"] is None:
        signs = packed[src]
    else:
        wide = np.zeros(packed.size + 1, dtype=np.uint16)
        wide[:-1] = packed
        signs = (wide[src] | (wide[src + 1] << np.uint16(8))) >> plan["shift"]
    signs &= plan["mask"]
    payload[plan["sign"]] = signs


def unpack_sign_bits(payload: np.ndarray, block: Block) -> np.ndarray:
    """The block's sign bits (uint8, 1 ⇔ negative), one per element, padding dropped."""
    bits = np.unpackbits(payload[block.plan["sign"]], bitorder="little")
    runs = block.plan["runs"]
    if len(runs) == 1:
        return bits[: block.numel]
    flat_bits = np.empty(block.numel, dtype=np.uint8)
    for a, b, s in runs:
        flat_bits[a:b] = bits[s : s + b - a]
    return flat_bits

"""Per-tensor compression of a flat parameter buffer.

The CHOCO paper compresses each layer on its own (per-tensor ``k``, scale and norm; ResNet-20
has 59 tensors with option-A shortcuts, 65 with option B; arXiv:1907.09356 §5).
:class:`PerTensor` applies an inner compressor to each segment of a flat vector and
concatenates the messages, so one buffer still travels per step. Its contraction is the
worst over the segments: ``δ = min_l δ_l(d_l)``, because
``||Q(x) - x||^2 = Σ_l ||Q(x_l) - x_l||^2 <= Σ_l (1 - δ_l) ||x_l||^2``.

Batched kernels. The payload is, for every segment ``l``, the message
``inner.encode(x_l, segment_seed(seed, l))``; since the sizes are fixed, the byte offset of
every segment message, its constant header bytes (all but the seed) and the place of every
field are computed once. For ``sign``, ``topk:R``, ``topk:R:rice``, ``randblock:R`` (not
``:raw``) and ``natural`` on CPU (the numpy host kernels,
:func:`choco.compress._host.use_host_kernels`) the segments shorter than :data:`BATCH_MAX`
are then encoded and decoded together, in blocks of at most :data:`BATCH_MAX` elements, with
a handful of whole-block numpy passes instead of a Python round trip per tensor; the bytes
and the decoded values are exactly those of the per-segment loop
(``tests/test_segmented_kernels.py`` checks them byte for byte). ``randblock`` and
``natural`` seed one generator per segment, so their random draws alone stay a loop over
the segments. Every other inner compressor, other devices and dtypes, and a buffer whose
segment headers are not the expected ones (which the loop then rejects with its own error)
use the per-segment loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..wire import rice_nbits_bound
from ..wire.framing import HEADER_SIZE, check_codec, pack_header, parse_header
from . import _host
from .base import CompressionError, Compressor, Reserved, check_finite
from .natural import Natural, _too_large
from .sign import Sign
from .sparse import RandBlock, Support
from .stateful import is_stateful
from .topk import OVERSAMPLE, SAMPLE_MIN_NUMEL, TopK, TopKRice

#: segments with at least this many elements are coded alone (the inner compressor's own
#: chunked kernels); shorter ones are batched in blocks of at most this many elements
BATCH_MAX = 1 << 20
#: sample size of the threshold of a longer segment's top-k
SAMPLE_ROWS = 256
#: segments up to this long find their k-th largest magnitude in one padded row sort
SMALL_SEGMENT = 256

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = 0xFFFFFFFFFFFFFFFF


def segment_seed(seed: int, index: int) -> int:
    """A distinct 64-bit seed per segment (splitmix64 of ``seed + index``)."""
    z = (seed + 0x9E3779B97F4A7C15 * (index + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def segment_seeds(seed: int, indices: np.ndarray) -> np.ndarray:
    """:func:`segment_seed` of every index at once, as ``uint64`` (arithmetic modulo 2^64).

    ``z = seed + φ (i + 1)``, ``z = (z ⊕ z >> 30) · c1``, ``z = (z ⊕ z >> 27) · c2``,
    ``z ⊕ z >> 31`` (splitmix64, ``φ = 0x9E3779B97F4A7C15``).
    """
    z = np.uint64(seed & _MASK) + np.uint64(_GOLDEN) * (indices.astype(np.uint64) + np.uint64(1))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _arange_within(lengths: np.ndarray) -> np.ndarray:
    """``[0, …, n_0 - 1, 0, …, n_1 - 1, …]``: the index of each item inside its group."""
    total = int(lengths.sum())
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - firsts


@dataclass
class _Block:
    """Consecutive segments ``lo … hi-1`` coded together.

    Element offsets (``starts``) are relative to the block's first element ``elem``, byte
    offsets (``offsets``) to the block's first byte ``byte`` in the PerTensor payload.
    """

    lo: int
    hi: int
    elem: int
    byte: int
    sizes: np.ndarray
    offsets: np.ndarray
    nbytes: np.ndarray
    plan: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return int(self.sizes.sum())

    @property
    def stop(self) -> int:
        return self.byte + int(self.nbytes.sum())

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.sizes) - self.sizes

    @property
    def bounds(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])


# ------------------------------------------------------------------------------- sign bits
def _prepare_signs(block: _Block, first: np.ndarray) -> None:
    """Plan the sign bytes of every segment: ``ceil(d_l/8)`` bytes from byte ``first[l]``.

    Bit ``t`` of byte ``j`` of segment ``l`` is ``[x_{s_l + 8 j + t} < 0]`` (LSB-first, zero
    padding bits), ``s_l`` the segment's first element. Every byte is cut out of the packed
    bits of the whole block with a shift (its start bit mod 8) and a mask (its valid bits);
    decoding copies runs of segments whose bits sit at a constant offset in the padded stream.
    """
    sizes, starts = block.sizes, block.starts
    nsign = (sizes + 7) // 8
    byte_in_seg = _arange_within(nsign)
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


def _pack_signs(negative: np.ndarray, plan: dict, payload: np.ndarray) -> None:
    """Write the sign bytes planned by :func:`_prepare_signs` of the block's ``x < 0``."""
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


def _unpack_signs(payload: np.ndarray, block: _Block) -> np.ndarray:
    """The block's sign bits (uint8, 1 ⇔ negative), one per element, padding dropped."""
    bits = np.unpackbits(payload[block.plan["sign"]], bitorder="little")
    runs = block.plan["runs"]
    if len(runs) == 1:
        return bits[: block.numel]
    flat = np.empty(block.numel, dtype=np.uint8)
    for a, b, s in runs:
        flat[a:b] = bits[s : s + b - a]
    return flat


# ------------------------------------------------------------------------------------ sign
class _SignKernel:
    """``sign`` on a block: ``Q(x_l) = (||x_l||_1 / d_l) sign(x_l)`` for every segment.

    Message of segment ``l``: header, fp32 scale, ``ceil(d_l/8)`` sign bytes (bit 1 ⇔
    ``x < 0``, LSB-first, zero padding bits). The scales are computed per segment with the
    same torch call as :meth:`Sign.encode_payload` (a batched reduction could sum in another
    order and change the last bit); the signs of the whole block are packed once and each
    segment's bytes are cut out of that stream with a shift (its start bit mod 8).
    """

    def __init__(self, inner: Sign) -> None:
        self.inner = inner

    def prepare(self, block: _Block) -> None:
        scale_at = block.offsets + HEADER_SIZE
        block.plan["scale"] = (scale_at[:, None] + np.arange(4)).reshape(-1)
        _prepare_signs(block, scale_at + 4)

    def encode(self, x: torch.Tensor, block: _Block, payload: np.ndarray,
               seeds: np.ndarray) -> None:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        sizes = block.sizes
        l1 = torch.stack([
            torch.linalg.vector_norm(seg, ord=1, dtype=acc)
            for seg in torch.split(x, sizes.tolist())
        ])
        scales = (l1 / torch.from_numpy(sizes).to(acc)).to(torch.float32)
        check_finite(scales, self.inner.spec)
        plan = block.plan
        payload[plan["scale"]] = scales.numpy().view(np.uint8)
        _pack_signs(x.detach().numpy() < 0, plan, payload)

    def check(self, payload: np.ndarray, block: _Block, seeds: np.ndarray) -> object:
        return True

    def decode_add_(self, payload: np.ndarray, block: _Block, state: object,
                    out: torch.Tensor, alpha: float) -> None:
        plan = block.plan
        target = out.detach().numpy()
        scales = payload[plan["scale"]].view(np.float32)
        # what Sign's host decoder adds: out += fl(±scale · alpha) in out's precision
        dtype = target.dtype
        word = np.dtype(f"u{dtype.itemsize}")
        value = np.multiply(scales, dtype.type(alpha), dtype=dtype).view(word)
        bits = _unpack_signs(payload, block)
        w = np.left_shift(bits, 8 * dtype.itemsize - 1, dtype=word)
        w ^= np.repeat(value, block.sizes)  # flip the sign bit of the negatives
        np.add(target, w.view(dtype), out=target)


# ------------------------------------------------------------------------------------ top-k
class _TopKKernel:
    """``topk:R`` / ``topk:R:rice`` on a block of segments on the exact path of
    :func:`choco.compress.topk.topk_indices` (fewer than ``SAMPLE_MIN_NUMEL`` elements or
    ``8 k > d``).

    Per segment the kept set is ``{i : |x_i| > t_l}`` plus the lowest positions with
    ``|x_i| = t_l``, up to ``k_l``, where ``t_l`` is the ``k_l``-th largest ``|x_i|``; ``t_l``
    is found by one padded row sort for short segments and ``np.partition`` for the others,
    the selection itself is one pass over the block. Message of segment ``l``: header,
    ``k_l`` fp32 values, then ``k_l`` int32 positions or their Rice code
    (:func:`choco.wire.rice_encode`, built for all segments in one bit stream).
    """

    def __init__(self, inner: TopK) -> None:
        self.inner = inner
        self.rice = inner.rice

    def prepare(self, block: _Block) -> None:
        sizes, starts = block.sizes, block.starts
        q, plan = self.inner, block.plan
        k = np.array([q.k(int(s)) for s in sizes], dtype=np.int64)
        plan["k"] = k
        seg_of = np.repeat(np.arange(sizes.size), k)
        plan["seg_start"] = np.repeat(starts, k)
        plan["seg_size"] = np.repeat(sizes, k)
        within = _arange_within(k)
        value_at = np.repeat(block.offsets + HEADER_SIZE, k) + 4 * within
        plan["value"] = (value_at[:, None] + np.arange(4)).reshape(-1)
        small = np.flatnonzero(sizes <= SMALL_SEGMENT)
        buckets = []
        width = 8
        while small.size:
            rows = small[sizes[small] <= width]
            small = small[sizes[small] > width]
            if rows.size:
                idx = starts[rows][:, None] + np.arange(width)
                idx = np.where(np.arange(width) < sizes[rows][:, None], idx, block.numel)
                buckets.append((rows, idx, width - k[rows]))
            width *= 2
        plan["buckets"] = buckets
        large = []
        for j in np.flatnonzero(sizes > SMALL_SEGMENT):
            d, start = int(sizes[j]), int(starts[j])
            stride = max(1, d // SAMPLE_ROWS)
            rows = -(-d // stride)
            rank = min(rows, math.ceil(OVERSAMPLE * int(k[j]) * rows / d) + 8)
            large.append((int(j), start, start + d, stride, rows - rank))
        plan["large"] = large
        if not self.rice:
            plan["position"] = (value_at + 4 * np.repeat(k, k))[:, None] + np.arange(4)
            plan["position"] = plan["position"].reshape(-1)
            return
        # Rice: each segment's code = remainders (k b bits) then unary (byte-aligned parts)
        b = np.array([q.rice_b(int(s)) for s in sizes], dtype=np.int64)
        rem_bits, unary_bits = rice_nbits_bound(k, sizes, b)
        rem_bytes = (rem_bits + 7) // 8
        code_bytes = rem_bytes + (unary_bits + 7) // 8
        base = np.cumsum(code_bytes) - code_bytes  # byte offset of each code in the stream
        plan["code"] = np.repeat(block.offsets + HEADER_SIZE + 4 * k, code_bytes) + \
            _arange_within(code_bytes)
        plan["code_bits"] = 8 * int(code_bytes.sum())
        plan["b"] = np.repeat(b, k)
        nb = np.repeat(b, k)  # remainder bits: entry e, bit t at rem base + b j + t
        plan["rem_entry"] = np.repeat(np.arange(k.sum()), nb)
        plan["rem_shift"] = _arange_within(nb)
        plan["rem_bit"] = np.repeat(8 * base[seg_of] + within * nb, nb) + plan["rem_shift"]
        plan["unary_base"] = np.repeat(8 * (base + rem_bytes), k)
        first = np.cumsum(k) - k
        plan["first"] = np.repeat(first, k)  # index of the segment's first entry
        unary_mask = np.zeros(plan["code_bits"], dtype=np.uint8)
        for j in range(sizes.size):
            lo = 8 * int(base[j] + rem_bytes[j])
            unary_mask[lo : lo + int(unary_bits[j])] = 1
        plan["unary_mask"] = unary_mask
        plan["unary_bounds"] = np.concatenate([8 * (base + rem_bytes), [plan["code_bits"]]])

    def select(self, x: np.ndarray, block: _Block) -> np.ndarray:
        """Block positions (ascending, grouped by segment) of every segment's top-k.

        Short segments get their ``t_l`` exactly (row sort); longer ones first a lower
        bound from a strided sample of :data:`SAMPLE_ROWS` magnitudes (its
        ``ceil(1.3 k_l n_s / d_l) + 8``-th largest, as :mod:`choco.compress.topk` does),
        then ``t_l`` exactly among the candidates ``|x_i| >= bound``, which hold the whole
        top-k whenever there are at least ``k_l`` of them (else the full segment is used).
        """
        plan, n = block.plan, x.size
        mags = np.empty(n + 1, dtype=x.dtype)
        ax = np.abs(x, out=mags[:n])
        mags[n] = -1  # padding of the short-segment rows, below every magnitude
        bound = np.empty(block.sizes.size, dtype=x.dtype)
        for rows, idx, col in plan["buckets"]:
            bound[rows] = np.sort(mags[idx], axis=1)[np.arange(rows.size), col]
        for j, start, stop, stride, col in plan["large"]:
            sample = np.partition(ax[start:stop:stride], col)
            bound[j] = sample[col]
        cand = np.flatnonzero(ax >= np.repeat(bound, block.sizes))
        cut = np.searchsorted(cand, block.bounds)
        kth, missed = bound, False
        for j, start, stop, _, _ in plan["large"]:
            c = ax[cand[cut[j] : cut[j + 1]]]
            k = int(plan["k"][j])
            if c.size < k:  # the sample missed: exact k-th largest of the whole segment
                c, missed = ax[start:stop], True
            kth[j] = np.partition(c, c.size - k)[c.size - k]
        if missed:  # candidates again, from the exact thresholds
            cand = np.flatnonzero(ax >= np.repeat(kth, block.sizes))
            cut = np.searchsorted(cand, block.bounds)
        mag = ax[cand]
        threshold = np.repeat(kth, np.diff(cut))
        above = cand[mag > threshold]
        ties = cand[mag == threshold]
        bounds = block.bounds
        need = plan["k"] - np.diff(np.searchsorted(above, bounds))
        tie_bounds = np.searchsorted(ties, bounds)
        seg = np.repeat(np.arange(need.size), np.diff(tie_bounds))
        rank = np.arange(ties.size) - tie_bounds[:-1][seg]
        chosen = np.concatenate([above, ties[rank < need[seg]]])
        chosen.sort()
        return chosen

    def encode(self, x: torch.Tensor, block: _Block, payload: np.ndarray,
               seeds: np.ndarray) -> None:
        plan = block.plan
        xn = x.detach().numpy()
        chosen = self.select(xn, block)
        values = xn[chosen]
        if values.dtype != np.float32:  # torch's conversion, as as_float32 does
            values = torch.from_numpy(values).to(torch.float32).numpy()
        payload[plan["value"]] = values.view(np.uint8)
        local = chosen - plan["seg_start"]
        if not self.rice:
            payload[plan["position"]] = local.astype(np.int32).view(np.uint8)
            return
        b = plan["b"]
        gaps = np.diff(local, prepend=-1) - 1
        is_first = plan["first"] == np.arange(gaps.size)
        gaps[is_first] = local[is_first]
        bits = np.zeros(plan["code_bits"], dtype=np.uint8)
        bits[plan["rem_bit"]] = (gaps[plan["rem_entry"]] >> plan["rem_shift"]) & 1
        steps = np.cumsum((gaps >> b) + 1)
        before = np.where(plan["first"] > 0, steps[plan["first"] - 1], 0)
        bits[plan["unary_base"] + steps - before - 1] = 1
        payload[plan["code"]] = np.packbits(bits, bitorder="little")

    def check(self, payload: np.ndarray, block: _Block,
              seeds: np.ndarray) -> np.ndarray | None:
        """Block positions of every kept entry, or None if a segment's positions are
        invalid (the per-segment loop then raises its own error)."""
        plan = block.plan
        if not self.rice:
            local = payload[plan["position"]].view(np.int32).astype(np.int64)
            if local.size and (local.min() < 0 or (local >= plan["seg_size"]).any()):
                return None
            return local + plan["seg_start"]
        bits = np.unpackbits(payload[plan["code"]], bitorder="little")
        ones = np.flatnonzero(bits & plan["unary_mask"])
        if ones.size != plan["k"].sum() or not np.array_equal(
            np.diff(np.searchsorted(ones, plan["unary_bounds"])), plan["k"]
        ):
            return None
        b, first = plan["b"], plan["first"]
        quotients = np.diff(ones, prepend=0) - 1
        is_first = first == np.arange(ones.size)
        quotients[is_first] = ones[is_first] - plan["unary_base"][is_first]
        rem = np.zeros(ones.size, dtype=np.int64)
        if plan["rem_bit"].size:
            rem = np.bincount(plan["rem_entry"],
                              weights=bits[plan["rem_bit"]].astype(np.int64) << plan["rem_shift"],
                              minlength=ones.size).astype(np.int64)
        steps = np.cumsum((quotients << b) + rem + 1)
        local = steps - np.where(first > 0, steps[first - 1], 0) - 1
        if local.size and (local >= plan["seg_size"]).any():
            return None
        return local + plan["seg_start"]

    def decode_add_(self, payload: np.ndarray, block: _Block, state: np.ndarray,
                    out: torch.Tensor, alpha: float) -> None:
        values = torch.from_numpy(payload[block.plan["value"]].view(np.float32))
        out.index_add_(0, torch.from_numpy(state), values.to(out.dtype), alpha=alpha * 1.0)


# ------------------------------------------------------------------------------ random block
class _RandBlockKernel:
    """``randblock:R`` (not ``:raw``) on a block of segments.

    Segment ``l`` keeps the ``k_l`` entries ``(s_l + j) mod d_l``, ``j = 0 … k_l - 1``, with
    ``s_l = r_l mod d_l`` and ``r_l`` the first raw draw of ``SFC64(segment_seed(seed, l))``
    (:func:`choco.compress._host.block_start`); its message is the header then the ``k_l``
    kept values as fp32. Each ``s_l`` needs its own seeded generator, so the starts are
    drawn in a loop (one ``block_start`` per segment, the only per-segment Python work);
    the positions, the gather, the fp32 words and the add are one pass over the block.
    """

    def __init__(self, inner: RandBlock) -> None:
        self.inner = inner

    def prepare(self, block: _Block) -> None:
        sizes, plan = block.sizes, block.plan
        k = np.array([self.inner.k(int(s)) for s in sizes], dtype=np.int64)
        plan["k"] = k
        plan["size_list"] = sizes.tolist()
        plan["within"] = _arange_within(k)
        plan["seg_start"] = np.repeat(block.starts, k)
        plan["seg_size"] = np.repeat(sizes, k)
        value_at = np.repeat(block.offsets + HEADER_SIZE, k) + 4 * plan["within"]
        plan["word"] = value_at // 4  # every message is a multiple of 4 bytes long

    def positions(self, block: _Block, seeds: np.ndarray) -> tuple[list[int], np.ndarray]:
        """``(s_l for every segment, block position of every kept entry)``:
        ``start_l + (s_l + j) mod d_l``, grouped by segment in support order."""
        plan = block.plan
        starts = [_host.block_start(int(s), d) for s, d in zip(seeds, plan["size_list"],
                                                                 strict=True)]
        offset = np.repeat(np.array(starts, dtype=np.int64), plan["k"]) + plan["within"]
        return starts, plan["seg_start"] + offset % plan["seg_size"]

    def encode(self, x: torch.Tensor, block: _Block, payload: np.ndarray,
               seeds: np.ndarray) -> None:
        _, index = self.positions(block, seeds)
        values = x.detach().numpy()[index]
        if values.dtype != np.float32:  # torch's conversion, as as_float32 does
            values = torch.from_numpy(values).to(torch.float32).numpy()
        payload.view(np.uint32)[block.plan["word"]] = values.view(np.uint32)

    def check(self, payload: np.ndarray, block: _Block,
              seeds: np.ndarray) -> tuple[list[int], np.ndarray]:
        return self.positions(block, seeds)

    def decode_add_(self, payload: np.ndarray, block: _Block,
                    state: tuple[list[int], np.ndarray], out: torch.Tensor,
                    alpha: float) -> None:
        """``out[S_l] += alpha v_l`` with torch's ``add_`` (as :meth:`Support.add_`).

        fp32/fp64: one gather, one ``add_`` and one scatter for the block (torch's
        ``a + alpha b`` is the same in its vector body and its scalar tail there). fp16:
        ``add_`` rounds differently in the two, so the sum depends on where an element falls
        in the call; the values are converted at once but added segment by segment with the
        loop's own slices, which keeps the sum bit-identical to the loop's.
        """
        starts, index = state
        values = torch.from_numpy(payload.view(np.uint32)[block.plan["word"]].view(np.float32))
        values = values.to(out.dtype)
        if out.dtype == torch.float16:
            pos = 0
            for start, k, seg in zip(starts, block.plan["k"].tolist(),
                                     torch.split(out, block.plan["size_list"]), strict=True):
                Support(k, None, start).add_(seg, values[pos : pos + k], alpha)
                pos += k
            return
        where = torch.from_numpy(index)
        kept = out[where]
        kept.add_(values, alpha=alpha)
        out[where] = kept


# ----------------------------------------------------------------------------------- natural
class _NaturalKernel:
    """``natural`` / ``natural:raw`` on a block of segments.

    Segment ``l``: ``u`` = the first ``d_l`` uint32 of ``SFC64(segment_seed(seed, l))``'s raw
    stream, ``e' = ((bits(x) & 0x7FFFFFFF) + (u >> 9)) >> 23`` (stochastic rounding to a
    power of two, :mod:`choco.compress.natural`); message: header, ``ceil(d_l/8)`` sign
    bytes, ``d_l`` exponent bytes. Each segment's ``u`` comes from its own seeded generator,
    drawn in a loop (the only per-segment Python work); the rounding, the range check, the
    sign packing, the exponent bytes (one boolean-mask scatter) and the decoded sum
    ``out += (alpha c) ((sign << 31) | (e' << 23))``, ``c = 8/9`` or 1, are whole-block
    passes.
    """

    def __init__(self, inner: Natural) -> None:
        self.inner = inner

    def prepare(self, block: _Block) -> None:
        sizes, plan = block.sizes, block.plan
        nsign = (sizes + 7) // 8
        _prepare_signs(block, block.offsets + HEADER_SIZE)
        plan["size_list"] = sizes.tolist()
        plan["bounds"] = block.bounds.tolist()
        exps = np.zeros(int(block.nbytes.sum()), dtype=bool)
        exps[np.repeat(block.offsets + HEADER_SIZE + nsign, sizes) + _arange_within(sizes)] = 1
        plan["exps"] = exps

    def encode(self, x: torch.Tensor, block: _Block, payload: np.ndarray,
               seeds: np.ndarray) -> None:
        plan = block.plan
        xn = (x if x.dtype == torch.float32 else x.to(torch.float32)).detach().numpy()
        u = np.empty(xn.size, dtype=np.uint32)
        bounds = plan["bounds"]
        for j, (seed, d) in enumerate(zip(seeds, plan["size_list"], strict=True)):
            u[bounds[j] : bounds[j + 1]] = _host.random_u32(_host.host_bitgen(int(seed)), d)
        u >>= 9  # uniform on [0, 2^23)
        a = np.bitwise_and(xn.view(np.uint32), np.uint32(0x7FFFFFFF))
        a += u
        a >>= 23
        if a.max() >= 255:
            raise _too_large(self.inner.spec)
        payload[plan["exps"]] = a
        _pack_signs(xn < 0, plan, payload)

    def check(self, payload: np.ndarray, block: _Block, seeds: np.ndarray) -> object:
        return True

    def decode_add_(self, payload: np.ndarray, block: _Block, state: object,
                    out: torch.Tensor, alpha: float) -> None:
        w = payload[block.plan["exps"]].astype(np.uint32)
        w <<= 23
        w |= _unpack_signs(payload, block).astype(np.uint32) << 31
        _host.add_into(out.detach().numpy(), w.view(np.float32), alpha * self.inner.scale())


_Kernel = _SignKernel | _TopKKernel | _RandBlockKernel | _NaturalKernel


def _kernel(inner: Compressor) -> _Kernel | None:
    """The batched kernel of ``inner``, or None (per-segment loop)."""
    if type(inner) is Sign:
        return _SignKernel(inner)
    if type(inner) in (TopK, TopKRice):
        return _TopKKernel(inner)  # type: ignore[arg-type]
    if type(inner) is RandBlock and not inner.is_raw:  # :raw scales each segment by d/k
        return _RandBlockKernel(inner)
    if type(inner) is Natural:
        return _NaturalKernel(inner)
    return None


class PerTensor(Compressor):
    """Apply ``inner`` to each of the consecutive segments ``sizes`` of a flat vector."""

    codec_id = 100

    def __init__(self, inner: Compressor, sizes: Sequence[int]) -> None:
        if not sizes or any(int(s) < 1 for s in sizes):
            raise CompressionError(
                f"per-tensor compression needs positive segment sizes, got {list(sizes)[:8]}"
            )
        if is_stateful(inner):  # lgc: one learned code per vector
            raise CompressionError(
                f"lgc learns one code for a whole vector and cannot run per tensor, got "
                f"per-tensor {inner.spec}; compress the flat vector (no --sizes)"
            )
        self.inner = inner
        self.sizes = [int(s) for s in sizes]
        self.numel = sum(self.sizes)
        self.spec = inner.spec
        self.unbiased = inner.unbiased
        self.is_raw = inner.is_raw
        self._kernel = _kernel(inner)
        self._layout: tuple | None = None
        self._nbytes: dict[torch.dtype, int] = {}

    # ------------------------------------------------------------------ batched layout
    def _plan(self, kernel: _Kernel) -> tuple:
        """``(items, header index, header template, payload bytes)`` for ``kernel`` (this
        compressor's batched kernel), built once.

        ``items`` are :class:`_Block` s (batched) and ``(i, elem, byte, nbytes)`` tuples
        (segment ``i`` coded alone); the header index and template cover every segment.
        """
        if self._layout is not None:
            return self._layout
        sizes = np.array(self.sizes, dtype=np.int64)
        nbytes = np.array([self.inner.nbytes(s) for s in self.sizes], dtype=np.int64)
        offsets = np.cumsum(nbytes) - nbytes
        elems = np.cumsum(sizes) - sizes
        alone = sizes >= BATCH_MAX
        if isinstance(kernel, _TopKKernel):  # the sampled path of topk_indices
            k = np.array([self.inner.k(s) for s in self.sizes])  # type: ignore[attr-defined]
            alone |= (sizes >= SAMPLE_MIN_NUMEL) & (k * 8 <= sizes)
        items: list = []
        lo = 0
        while lo < sizes.size:
            if alone[lo]:
                items.append((lo, int(elems[lo]), int(offsets[lo]), int(nbytes[lo])))
                lo += 1
                continue
            hi, total = lo, 0
            while hi < sizes.size and not alone[hi] and total + sizes[hi] <= BATCH_MAX:
                total += int(sizes[hi])
                hi += 1
            block = _Block(lo, hi, int(elems[lo]), int(offsets[lo]), sizes[lo:hi],
                           offsets[lo:hi] - offsets[lo], nbytes[lo:hi])
            kernel.prepare(block)
            items.append(block)
            lo = hi
        template = np.frombuffer(b"".join(
            pack_header(self.inner.codec_id, 0, s, 0) for s in self.sizes), dtype=np.uint8)
        index = (offsets[:, None] + np.arange(HEADER_SIZE)).reshape(-1)
        self._layout = (items, index, template.reshape(-1, HEADER_SIZE), int(nbytes.sum()))
        return self._layout

    def _encode_batched(self, kernel: _Kernel, x: torch.Tensor, seed: int) -> Reserved:
        items, index, template, total = self._plan(kernel)
        message = Reserved(total)
        payload = message.payload
        headers = template.copy()
        seeds = segment_seeds(seed, np.arange(len(self.sizes)))
        headers[:, 8:] = seeds.astype("<u8").view(np.uint8).reshape(-1, 8)
        payload[index] = headers.reshape(-1)
        if isinstance(kernel, _TopKKernel | _RandBlockKernel):
            check_finite(x, self.inner.spec)
        for item in items:
            if isinstance(item, _Block):
                kernel.encode(x[item.elem : item.elem + item.numel], item,
                              payload[item.byte : item.stop], seeds[item.lo : item.hi])
            else:
                i, elem, byte, nbytes = item
                seg = self.inner.encode(x[elem : elem + self.sizes[i]], int(seeds[i]))
                payload[byte : byte + nbytes] = seg.numpy()
        return message

    def _decode_batched(self, kernel: _Kernel, payload: torch.Tensor, out: torch.Tensor,
                        alpha: float) -> bool:
        """Add every segment's ``alpha Q(x_l)``; False (nothing added) if the buffer is not
        laid out as expected, for the per-segment loop to decode or reject it."""
        items, index, template, total = self._plan(kernel)
        data = payload.numpy()
        if data.size != total or not np.array_equal(
            data[index].reshape(-1, HEADER_SIZE)[:, :8], template[:, :8]
        ):
            return False
        seeds = data[index].reshape(-1, HEADER_SIZE)[:, 8:].copy().view("<u8").reshape(-1)
        states = []
        for item in items:
            if isinstance(item, _Block):
                state = kernel.check(data[item.byte : item.stop], item, seeds[item.lo : item.hi])
                if state is None:
                    return False
                states.append(state)
        blocks = iter(states)
        for item in items:
            if isinstance(item, _Block):
                kernel.decode_add_(data[item.byte : item.stop], item, next(blocks),
                                   out[item.elem : item.elem + item.numel], alpha)
            else:
                i, elem, byte, nbytes = item
                self.inner.decode_add_(payload[byte : byte + nbytes],
                                       out[elem : elem + self.sizes[i]], alpha)
        return True

    def _check(self, numel: int) -> None:
        if numel != self.numel:
            raise CompressionError(
                f"per-tensor {self.spec}: segments cover {self.numel} elements, got a vector "
                f"of {numel}; build PerTensor with the sizes of the tensors being gossiped."
            )

    def nbytes(self, numel: int, dtype: torch.dtype = torch.float32) -> int:
        """``16 + Σ_l inner.nbytes(d_l, dtype)`` (cached per dtype: the sizes are fixed)."""
        self._check(numel)
        total = self._nbytes.get(dtype)
        if total is None:
            total = HEADER_SIZE + sum(self.inner.nbytes(s, dtype) for s in self.sizes)
            self._nbytes[dtype] = total
        return total

    def payload_nbytes(self, numel: int) -> int:
        return self.nbytes(numel) - HEADER_SIZE

    def delta(self, numel: int) -> float:
        self._check(numel)
        return min(self.inner.delta(s) for s in self.sizes)

    def omega(self, numel: int) -> float:
        self._check(numel)
        return max(self.inner.omega(s) for s in self.sizes)

    def raw(self) -> Compressor:
        return self if self.is_raw else PerTensor(self.inner.raw(), self.sizes)

    def read_header(self, buf: torch.Tensor) -> tuple[int, int, int]:
        """Check the header of ``buf`` and its ``numel``; return ``(flags, numel, seed)``.

        The total length is not checked here: each segment's message is checked against its
        own header in :meth:`decode_payload_add_` (identity's lengths depend on the dtype).
        """
        codec, flags, numel, seed = parse_header(buf, self.spec)
        check_codec(codec, self.codec_id, f"per-tensor {self.spec}", fix="")
        self._check(numel)
        return flags, numel, seed

    def encode_payload(self, x: torch.Tensor, seed: int) -> tuple[int, torch.Tensor | Reserved]:
        self._check(x.numel())
        kernel = self._kernel
        if kernel is not None and _host.use_host_kernels(x):
            return 0, self._encode_batched(kernel, x, seed)
        parts = [
            self.inner.encode(seg, segment_seed(seed, i))
            for i, seg in enumerate(torch.split(x, self.sizes))
        ]
        return 0, torch.cat(parts)

    def decode_payload_add_(self, payload, flags, seed, out, alpha):
        kernel = self._kernel
        if (kernel is not None and _host.use_host_kernels(out)
                and self._decode_batched(kernel, payload, out, alpha)):
            return
        pos = 0
        for seg in torch.split(out, self.sizes):
            _, seg_flags, numel, _ = parse_header(payload[pos:], self.spec)
            length = self.inner.message_nbytes(numel, seg_flags)
            self.inner.decode_add_(payload[pos : pos + length], seg, alpha)
            pos += length
        if pos != payload.numel():
            raise CompressionError(
                f"per-tensor {self.spec}: {payload.numel() - pos} trailing bytes; corrupt buffer"
            )

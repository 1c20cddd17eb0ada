"""Codecs applied to every node's row of an ``(n, d)`` array at once, bit for bit.

Covered: ``sign``, ``identity``, ``topk:R`` (int32 or Rice-coded positions), ``randk:R``,
``randblock:R``, ``natural``, ``qsgd:S`` and ``dither:S`` (and their ``:raw`` forms); the
sign case is described here, the others in their classes.

When one thread drives every node of an in-process network (:mod:`choco.batched`), a
codec without coding state, whose randomness (if any) is keyed by the message seed, can
code all nodes' rows together (the random supports of rand-k and random-block, and the
rounding bits of natural, qsgd and dither, come from each row's round seed, as the
per-node encoder draws them): the
round's messages are held as arrays (one scale per row, one sign word per element) instead
of ``n`` framed buffers, and each neighbour slot is added with one numpy pass over the
``n × d`` target. The values added are the ones the per-node decoder adds, computed with
the same IEEE operations in the same precision:

* the scale of row ``i`` is the per-node scale of that row, computed by the per-node
  function on the row (a batched reduction could sum in another order and change the last
  bit);
* ``out[r] += ±fl(scale_j · α_r)`` elementwise, with the sign bit set where
  ``row_j < 0``, exactly :func:`choco.compress.sign._decode_alone`.

The message a node would send is never built, so :attr:`BatchCodec.message_nbytes` is the
length of the real message (taken from the per-node encoder once), from which bytes sent
are counted. :func:`batch_codec` returns ``None`` for any codec or vector it cannot code
exactly; the caller then drives the per-node objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import numpy as np
import torch

from . import _host
from .base import Compressor, as_float32, check_finite
from .identity import Identity
from .natural import Natural, _too_large
from .quantize import QSGD, BucketQuantizer, Dither
from .selection import SAMPLE_MIN_NUMEL, topk_indices
from .sign import Sign, _host_l1_scale
from .sparse import RandBlock, RandK, Sparsifier, Support
from .topk import TopK, TopKRice

__all__ = ["BatchCodec", "BatchIdentity", "BatchNatural", "BatchQuantizer", "BatchSign",
           "BatchSparse", "BatchTopK", "Senders", "batch_codec"]


#: what selects the senders of a batched add: a slice of rows or an index per row
Senders = slice | np.ndarray


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """numpy's dtype of a torch floating dtype (fp16, fp32, fp64)."""
    return np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)


def _message_nbytes(codec: Compressor, numel: int, dtype: torch.dtype) -> int:
    """The length of one real message of ``numel`` elements: what a node sends a neighbour
    (every codec here has a fixed length for a given ``numel`` and dtype)."""
    return int(codec.encode(torch.zeros(numel, dtype=dtype)).numel())


def _row_seeds(spec: str, seeds: Sequence[int] | None) -> Sequence[int]:
    """The rows' round seeds, which a seeded codec's ``encode_`` requires."""
    if seeds is None:
        raise ValueError(f"{spec}: a seeded batched codec needs the rows' round seeds; pass "
                         "seeds=[round_seed(seed, i, t) for each row i] to encode_ (as "
                         "BatchedChocoGossip does when codec.seeded).")
    return seeds


def _as_fp32(block: np.ndarray) -> np.ndarray:
    """The rows in fp32 as the encoders' ``as_float32`` converts them (torch's rounding)."""
    return torch.from_numpy(block).to(torch.float32).numpy()


def _add_scaled(out: np.ndarray, values: np.ndarray, alpha: np.ndarray,
                rows: np.ndarray | None) -> None:
    """``out[rows[k]] += fl(values[k] · fl(α_k))`` in ``out``'s precision, elementwise: the
    decoders' ``_host.add_into`` with a weight per row (``rows`` None: ``k`` itself)."""
    scaled = np.multiply(values, alpha.astype(out.dtype)[:, None], dtype=out.dtype)
    if rows is None:
        np.add(out, scaled, out=out)
    else:
        out[rows] += scaled


class BatchCodec(Protocol):
    """What :class:`choco.batched.BatchedChocoGossip` needs of a codec.

    The round's messages live in arrays made by :meth:`messages`; :meth:`encode_` fills the
    rows of one block, :meth:`add_` adds decoded rows into a block of a target, so a round
    can run block by block (blocks that stay in the CPU's cache).
    """

    #: bytes of one node's message (header included), the same for every node and round
    message_nbytes: int
    #: whether :meth:`encode_` needs every row's round seed (``seeds``)
    seeded: bool

    def messages(self, n: int) -> object:
        """Room for the messages of ``n`` rows."""

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int, seeds: Sequence[int] | None = None) -> None:
        """The messages of rows ``start, start + 1, …``: ``rows`` their tensors (views),
        ``block`` the same rows as one ``(len(rows), d)`` array, ``seeds`` their round
        seeds (given when :attr:`seeded`)."""

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        """``out[rows[k]] += alpha[k] · Q(row senders[k])`` for every ``k`` (``rows``
        ``None``: ``k`` itself), each row in the per-node decoder's arithmetic."""


def batch_codec(compressor: Compressor, numel: int, dtype: torch.dtype) -> BatchCodec | None:
    """The batched form of ``compressor`` for ``numel``-element rows of ``dtype``, or
    ``None`` where it would not be bit-identical to the per-node codec (another codec, a
    subclass, the torch kernels, a vector the host kernel codes in chunks).

    Covered: ``sign`` (:class:`BatchSign`), ``identity`` (:class:`BatchIdentity`),
    ``topk:R`` and ``topk:R:rice`` (:class:`BatchTopK`), ``randk:R``
    and ``randblock:R`` with or without ``:raw`` (:class:`BatchSparse`), ``natural`` and
    ``natural:raw`` (:class:`BatchNatural`), ``qsgd:S`` and ``dither:S`` with any bucket
    size, with or without ``:raw`` (:class:`BatchQuantizer`), for fp16, fp32 and fp64 rows
    of ``1 <= d <= 2^18`` elements on the host kernels.
    """
    if (dtype not in (torch.float16, torch.float32, torch.float64)
            or not _host.use_host_kernels(torch.empty(0, dtype=dtype))
            or not 1 <= numel <= _host.CHUNK):
        return None
    kind = type(compressor)
    if kind is Sign:
        return BatchSign(cast("Sign", compressor), numel, dtype)
    if kind is Identity:
        return BatchIdentity(cast("Identity", compressor), numel, dtype)
    if kind in (TopK, TopKRice):  # the same kept set and values; only the bytes differ
        return BatchTopK(cast("TopK", compressor), numel, dtype)
    if kind in (RandK, RandBlock):
        return BatchSparse(cast("Sparsifier", compressor), numel, dtype)
    if kind is Natural:
        return BatchNatural(cast("Natural", compressor), numel, dtype)
    if kind in (QSGD, Dither):
        return BatchQuantizer(cast("BucketQuantizer", compressor), numel, dtype)
    return None


class BatchSign:
    """:class:`~choco.compress.sign.Sign` on every row: ``Q(x) = (||x||_1/d) sign(x)``.

    A message is the fp32 scale of the wire format (per row) and the sign ``x < 0`` (per
    element); ``add_`` forms the target's words ``sign bit | bits(fl(scale · α))`` and adds
    them, as the per-node decoder does.
    """

    def __init__(self, codec: Sign, numel: int, dtype: torch.dtype) -> None:
        self.codec = codec
        self.numel = numel
        self.dtype = _numpy_dtype(dtype)
        self.uint = np.dtype(f"u{self.dtype.itemsize}")
        self.shift = 8 * self.dtype.itemsize - 1
        # the real message of one row: its length is the bytes one node sends a neighbour
        self.message_nbytes = _message_nbytes(codec, numel, dtype)
        self.seeded = False
        self._words: np.ndarray | None = None  # the slot's words, a buffer reused per block

    def messages(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scales, negative)``: ``(n,)`` fp32 and ``(n, d)`` bool."""
        return np.empty(n, dtype=np.float32), np.empty((n, self.numel), dtype=bool)

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int, seeds: Sequence[int] | None = None) -> None:
        scales, negative = cast("tuple[np.ndarray, np.ndarray]", messages)
        stop = start + len(rows)
        for i, row in enumerate(rows, start):
            scales[i] = _host_l1_scale(row)  # the per-node function on that row
        if not np.isfinite(scales[start:stop]).all():
            check_finite(torch.from_numpy(scales[start:stop]), self.codec.spec)  # its error
        np.less(block, 0, out=negative[start:stop])

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        scales, negative = cast("tuple[np.ndarray, np.ndarray]", messages)
        scales, negative = scales[senders], negative[senders]
        # the per-node decoder's words (sign._word, sign._decode_alone), row by row:
        # (row < 0) << (bits − 1) | bits(fl(scale · α)), added as the target's floats
        value = np.multiply(scales, alpha.astype(self.dtype), dtype=self.dtype).view(self.uint)
        words = self._buffer(len(scales))
        np.left_shift(negative.view(np.uint8), self.shift, out=words, dtype=self.uint)
        words |= value[:, None]
        if rows is None:
            np.add(out, words.view(self.dtype), out=out)
        else:
            out[rows] += words.view(self.dtype)

    def _buffer(self, count: int) -> np.ndarray:
        """The words of one slot, ``(count, d)`` unsigned, a buffer reused per block."""
        if self._words is None or self._words.shape[0] < count:
            self._words = np.empty((count, self.numel), dtype=self.uint)
        return self._words[:count]


def _pairs(out: np.ndarray, alpha: np.ndarray, senders: Senders,
           rows: np.ndarray | None) -> zip[tuple[torch.Tensor, int, float]]:
    """``(target row, sender, α)`` of every ``k`` of a batched add: the target rows as 1-D
    tensors (views of ``out``), the senders' row numbers, the weights as Python floats."""
    targets = torch.from_numpy(out).unbind(0)
    if rows is not None:
        targets = tuple(targets[r] for r in rows.tolist())
    if isinstance(senders, slice):
        sent: Sequence[int] = range(senders.start or 0, senders.stop)
    else:
        sent = senders.tolist()
    return zip(targets, sent, alpha.tolist(), strict=True)


class BatchIdentity:
    """:class:`~choco.compress.identity.Identity` on every row: ``Q(x) = x``.

    A message is the row itself (a copy, in its dtype: the wire carries its bytes as they
    are); ``add_`` makes the per-node decoder's call ``out.add_(q_j, alpha=w)`` on each
    target row, so every sum rounds as the per-node one does (torch's ``a + α b`` is one
    call per vector; the rows of one 2-D call could be cut differently between its vector
    body and its scalar tail).
    """

    def __init__(self, codec: Identity, numel: int, dtype: torch.dtype) -> None:
        self.codec, self.numel, self.dtype = codec, numel, dtype
        self.message_nbytes = _message_nbytes(codec, numel, dtype)
        self.seeded = False
        # |x_i| below this for every i: the row's sum is finite, as the encoder requires
        self._finite_below = float(torch.finfo(dtype).max) / 2 / numel

    def messages(self, n: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(q, rows of q)``: ``(n, d)`` in the rows' dtype."""
        q = torch.empty((n, self.numel), dtype=self.dtype)
        return q, q.unbind(0)

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int, seeds: Sequence[int] | None = None) -> None:
        q, _ = cast("tuple[torch.Tensor, tuple[torch.Tensor, ...]]", messages)
        # the encoder's check (a finite sum); NaN makes the max NaN, so the test fails
        if not float(np.max(np.abs(block))) < self._finite_below:
            for row in rows:
                check_finite(row.sum(), self.codec.spec)  # the per-node check and error
        np.copyto(q.numpy()[start : start + len(rows)], block)

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        _, q = cast("tuple[torch.Tensor, tuple[torch.Tensor, ...]]", messages)
        for target, j, a in _pairs(out, alpha, senders, rows):
            target.add_(q[j], alpha=a)  # identity's decoder: out.add_(values, alpha=α)


class BatchTopK:
    """:class:`~choco.compress.topk.TopK` (int32 or Rice-coded positions) on every row.

    The kept set of a row is the codec's (:func:`choco.compress.selection.topk_indices`).
    Below its sampled path (``d < 2^16`` or ``8k > d``) that is, by its definition: ``t``
    the ``k``-th largest ``|x_i|`` (exact, ``np.partition`` over the block's rows), every
    ``|x_i| > t``, then the lowest positions with ``|x_i| = t`` up to ``k``, ascending. On
    the sampled path ties are not always broken by position (the candidates above the
    sampled bound are cut with ``argpartition``), so there each row calls
    ``topk_indices`` itself.
    The values are converted to fp32 (the wire) and back to the row's dtype with torch, as
    the encoder and :meth:`Support.add_ <choco.compress.sparse.Support.add_>` do, and added
    with the decoder's call ``out.index_add_(0, index, values, alpha=α)`` on each target row.
    ``topk:R:rice`` keeps the same set and sends the same values; only its position bytes
    (a fixed-length Rice code, counted through :attr:`message_nbytes`) differ, and they
    decode to the same ascending positions.
    """

    def __init__(self, codec: TopK, numel: int, dtype: torch.dtype) -> None:
        self.codec, self.numel, self.dtype = codec, numel, dtype
        self.k = codec.k(numel)
        # the codec's sampled selection path (selection.topk_indices): called per row
        self.sampled = self.k < numel and numel >= SAMPLE_MIN_NUMEL and self.k * 8 <= numel
        self.message_nbytes = _message_nbytes(codec, numel, dtype)
        self.seeded = False

    def messages(self, n: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...],
                                        torch.Tensor, torch.Tensor]:
        """``(values rows, index rows, values, index)``: ``(n, k)`` each, the values in the
        rows' dtype (after fp32), the positions int64 ascending."""
        values = torch.empty((n, self.k), dtype=self.dtype)
        index = torch.empty((n, self.k), dtype=torch.int64)
        return values.unbind(0), index.unbind(0), values, index

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int, seeds: Sequence[int] | None = None) -> None:
        _, _, values, index = cast("tuple[object, object, torch.Tensor, torch.Tensor]",
                                   messages)
        if not np.isfinite(block).all():
            for row in rows:
                check_finite(row, self.codec.spec)  # the per-node check and error
        stop, d, k = start + len(rows), self.numel, self.k
        chosen = index.numpy()[start:stop]
        if k >= d:
            chosen[:] = np.arange(d)
        elif self.sampled:
            for i, row in enumerate(rows):
                chosen[i] = topk_indices(row, k).numpy()  # the per-node selection
        else:
            mags = np.abs(block)
            kth = np.partition(mags, d - k, axis=1)[:, d - k : d - k + 1]  # k-th largest
            above = mags > kth
            ties = mags == kth
            room = k - above.sum(axis=1, keepdims=True)
            keep = above | (ties & (np.cumsum(ties, axis=1) <= room))  # lowest ties first
            chosen[:] = np.nonzero(keep)[1].reshape(len(rows), k)
        kept = torch.from_numpy(np.take_along_axis(block, chosen, axis=1))
        values[start:stop] = kept.to(torch.float32).to(self.dtype)  # the wire's fp32

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        values, index, _, _ = cast(
            "tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], object, object]",
            messages)
        for target, j, a in _pairs(out, alpha, senders, rows):
            target.index_add_(0, index[j], values[j], alpha=a)  # Support.add_'s call


_NO_POSITIONS = torch.empty(0, dtype=torch.uint8)


class BatchSparse:
    """:class:`~choco.compress.sparse.RandK` / :class:`~choco.compress.sparse.RandBlock`
    (and their ``:raw`` forms) on every row.

    Row ``i``'s support is the codec's own (``codec.support``) for the row's round seed,
    the seed its message header would carry, from which every receiver regenerates it; the
    kept values are converted to fp32 (the wire) as the encoder does, and added with the
    decoder's call :meth:`Support.add_ <choco.compress.sparse.Support.add_>` on each target
    row, ``α`` times the codec's value scale (``d/k`` for ``:raw``, else 1).
    """

    def __init__(self, codec: Sparsifier, numel: int, dtype: torch.dtype) -> None:
        self.codec, self.numel = codec, numel
        self.scale = codec.value_scale(numel)
        self.message_nbytes = _message_nbytes(codec, numel, dtype)
        self.seeded = True

    def messages(self, n: int) -> tuple[list[Support | None], tuple[torch.Tensor, ...]]:
        """``(support per row, fp32 values per row)``."""
        k = self.codec.k(self.numel)
        return [None] * n, torch.empty((n, k), dtype=torch.float32).unbind(0)

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int, seeds: Sequence[int] | None = None) -> None:
        supports, values = cast("tuple[list[Support | None], tuple[torch.Tensor, ...]]",
                                messages)
        seeds = _row_seeds(self.codec.spec, seeds)
        if not np.isfinite(block).all():
            for row in rows:
                check_finite(row, self.codec.spec)  # the per-node check and error
        for i, (row, seed) in enumerate(zip(rows, seeds, strict=True), start):
            support = self.codec.support(_NO_POSITIONS, self.numel, seed, row.device)
            supports[i] = support
            values[i].copy_(as_float32(support.gather(row)))  # the wire's fp32 values

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        supports, values = cast("tuple[list[Support | None], tuple[torch.Tensor, ...]]",
                                messages)
        for target, j, a in _pairs(out, alpha, senders, rows):
            support = supports[j]
            if support is None:
                raise ValueError(f"{self.codec.spec}: row {j} is added before it was encoded; "
                                 "call encode_ on every row of the round before add_.")
            support.add_(target, values[j], a * self.scale)  # the decoder's call


class BatchNatural:
    """:class:`~choco.compress.natural.Natural` (and ``:raw``) on every row.

    Row ``i`` is converted to fp32 with torch (as the encoder does) and rounded with the
    first ``d`` uint32 of ``SFC64(seed_i)``'s raw stream, its round seed (the per-node
    host kernel's draws): ``e' = ((bits & 0x7FFFFFFF) + (u >> 9)) >> 23``, one pass over a
    block of rows, with the encoder's range check (``e' < 255``). ``add_`` rebuilds the
    words ``(x < 0) << 31 | e' << 23`` as fp32 and adds them as the decoder's
    ``add_into`` does: ``fl(w · fl(α s))`` in the target's precision (``s = 8/9``, or 1
    for ``:raw``), then the sum, elementwise.
    """

    def __init__(self, codec: Natural, numel: int, dtype: torch.dtype) -> None:
        self.codec, self.numel = codec, numel
        self.scale = codec.scale()
        self.message_nbytes = _message_nbytes(codec, numel, dtype)
        self.seeded = True

    def messages(self, n: int) -> np.ndarray:
        """The decoded fp32 words ``(n, d)`` (as uint32): sign bit and exponent."""
        return np.empty((n, self.numel), dtype=np.uint32)

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int, seeds: Sequence[int] | None = None) -> None:
        words = cast("np.ndarray", messages)[start : start + len(rows)]
        for w, seed in zip(words, _row_seeds(self.codec.spec, seeds), strict=True):
            w[:] = _host.random_u32(_host.host_bitgen(seed), self.numel)  # the encoder's draws
        words >>= 9  # uniform on [0, 2^23)
        x32 = _as_fp32(block)
        bits = x32.view(np.uint32)
        words += bits & np.uint32(0x7FFFFFFF)
        words >>= 23
        if words.max() >= 255:
            raise _too_large(self.codec.spec)
        words <<= 23
        # the sign bit as the encoder packs it: x < 0 (so -0.0 sends +0, as on the wire)
        words |= (x32 < 0).astype(np.uint32) << np.uint32(31)

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        words = cast("np.ndarray", messages)[senders]
        _add_scaled(out, words.view(np.float32), alpha * self.scale, rows)


class BatchQuantizer:
    """:class:`~choco.compress.quantize.QSGD` / :class:`~choco.compress.quantize.Dither`
    (any bucket size, and ``:raw``) on every row.

    Row ``i`` is converted to fp32 with torch and zero-padded to whole buckets, as the
    encoder does; its bucket norms come from the encoder's own function on that row (a
    batched reduction could sum in another order), its rounding bits from the first
    draws of ``SFC64(seed_i)``; the levels and codes are elementwise passes over a block of
    rows. ``add_`` rebuilds ``±level · norm`` in fp32 and adds it as the decoder's
    ``add_into`` does: ``fl(v · fl(α s))`` in the target's precision (``s = 1/(1 + ω)``,
    or 1 for ``:raw``), then the sum.
    """

    def __init__(self, codec: BucketQuantizer, numel: int, dtype: torch.dtype) -> None:
        self.codec, self.numel = codec, numel
        self.size = codec.bucket_size(numel)
        self.buckets = -(-numel // self.size)
        self.scale = codec.scale(numel)
        self.signed = codec.signed_table.numpy()
        self.message_nbytes = _message_nbytes(codec, numel, dtype)
        self.seeded = True

    def messages(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(norms, codes)``: ``(n, buckets)`` fp32 and ``(n, d)`` int32 codes
        ``(level << 1) | negative``."""
        return (np.empty((n, self.buckets), dtype=np.float32),
                np.empty((n, self.numel), dtype=np.int32))

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int, seeds: Sequence[int] | None = None) -> None:
        norms_out, codes_out = cast("tuple[np.ndarray, np.ndarray]", messages)
        count, d, padded = len(rows), self.numel, self.buckets * self.size
        v = np.zeros((count, padded), dtype=np.float32)
        v[:, :d] = _as_fp32(block)
        r = np.empty((count, padded), dtype=np.uint32)
        norms = norms_out[start : start + count]
        for i, seed in enumerate(_row_seeds(self.codec.spec, seeds)):  # as the encoder, per row
            norms[i] = self.codec.bucket_norms(v[i].reshape(self.buckets, self.size), v[i, :d])
            r[i] = _host.random_u32(_host.host_bitgen(seed), padded)
        r >>= 8
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        v = v.reshape(count * self.buckets, self.size)
        y = np.abs(v) * inv.reshape(-1)[:, None]
        codes = (self.codec.levels_of(y, r.reshape(y.shape)) << 1) | (v < 0)
        codes_out[start : start + count] = codes.reshape(count, padded)[:, :d]

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        norms, codes = cast("tuple[np.ndarray, np.ndarray]", messages)
        values = self.signed[codes[senders]]  # ±level, indexed by (level << 1) | negative
        values *= np.repeat(norms[senders], self.size, axis=1)[:, : self.numel]
        _add_scaled(out, values, alpha * self.scale, rows)

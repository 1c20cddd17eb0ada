"""Codecs applied to every node's row of an ``(n, d)`` array at once, bit for bit.

When one thread drives every node of an in-process network (:mod:`choco.batched`), a
codec without coding state and without randomness can code all nodes' rows together: the
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
from .base import Compressor, check_finite
from .sign import Sign, _host_l1_scale

__all__ = ["BatchCodec", "BatchSign", "Senders", "batch_codec"]


#: what selects the senders of a batched add: a slice of rows or an index per row
Senders = slice | np.ndarray


class BatchCodec(Protocol):
    """What :class:`choco.batched.BatchedChocoGossip` needs of a codec.

    The round's messages live in arrays made by :meth:`messages`; :meth:`encode_` fills the
    rows of one block, :meth:`add_` adds decoded rows into a block of a target, so a round
    can run block by block (blocks that stay in the CPU's cache).
    """

    #: bytes of one node's message (header included), the same for every node and round
    message_nbytes: int

    def messages(self, n: int) -> object:
        """Room for the messages of ``n`` rows."""

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int) -> None:
        """The messages of rows ``start, start + 1, …``: ``rows`` their tensors (views),
        ``block`` the same rows as one ``(len(rows), d)`` array."""

    def add_(self, messages: object, out: np.ndarray, alpha: np.ndarray, senders: Senders,
             rows: np.ndarray | None = None) -> None:
        """``out[rows[k]] += alpha[k] · Q(row senders[k])`` for every ``k`` (``rows``
        ``None``: ``k`` itself), each row in the per-node decoder's arithmetic."""


def batch_codec(compressor: Compressor, numel: int, dtype: torch.dtype) -> BatchCodec | None:
    """The batched form of ``compressor`` for ``numel``-element rows of ``dtype``, or
    ``None`` where it would not be bit-identical to the per-node codec (another codec, a
    subclass, the torch kernels, a vector the host kernel codes in chunks)."""
    if (type(compressor) is Sign and dtype in (torch.float16, torch.float32, torch.float64)
            and _host.use_host_kernels(torch.empty(0, dtype=dtype))
            and 1 <= numel <= _host.CHUNK):
        return BatchSign(compressor, numel, dtype)
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
        self.dtype = np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
        self.uint = np.dtype(f"u{self.dtype.itemsize}")
        self.shift = 8 * self.dtype.itemsize - 1
        # the real message of one row: its length is the bytes one node sends a neighbour
        self.message_nbytes = int(codec.encode(torch.zeros(numel, dtype=dtype)).numel())
        self._words: np.ndarray | None = None  # the slot's words, a buffer reused per block

    def messages(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scales, negative)``: ``(n,)`` fp32 and ``(n, d)`` bool."""
        return np.empty(n, dtype=np.float32), np.empty((n, self.numel), dtype=bool)

    def encode_(self, rows: Sequence[torch.Tensor], block: np.ndarray, messages: object,
                start: int) -> None:
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

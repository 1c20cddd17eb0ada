"""Sparsifiers: keep ``k = max(1, ceil(R d))`` entries of ``x`` and send their values.

A sparsifier picks a :class:`Support` and sends the kept values as fp32, followed by
whatever the receiver needs to rebuild the support (int32 positions for top-k, nothing
for rand-k and random-block, whose supports are regenerated from the header's seed).
Decoding adds into the target on its support only: sparse messages are never densified.

:class:`RandK` and :class:`RandBlock` are the unscaled forms CHOCO uses (arXiv:1907.09356,
§3; measured δ in docs/compressors.md): each coordinate is kept with probability ``p = k/d``,
so ``E[Q(x)] = (k/d) x`` and ``E||Q(x) - x||^2 = (1 - k/d) ||x||^2``, i.e. ``δ = k/d``.
They are the unbiased operators ``C(x) = (d/k) x_S`` (variance ``ω = d/k - 1``) rescaled
by ``1/(1 + ω) = k/d``; the spec suffix ``:raw`` sends ``C`` for DCD/ECD-PSGD
(``δ = 1 - ω = 2 - d/k``, not contractive for ``k < d``).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..wire.framing import Reserved
from . import _host
from .base import (
    CompressionError,
    Compressor,
    as_float32,
    check_finite,
    from_bytes,
    ratio_count,
    to_bytes,
)
from .layout import Alone, Block, Layout, arange_within, decode_each, encode_each, flat


@dataclass(frozen=True)
class Support:
    """Kept positions: ascending ``index`` (int64, on the device), or the ``k`` entries
    ``start, start+1, …`` taken modulo ``d`` (one wrapped block) when ``index`` is None."""

    k: int
    index: torch.Tensor | None = None
    start: int = 0

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The kept entries of the flat ``x``, in support order."""
        if self.index is not None:
            return x[self.index]
        end = self.start + self.k
        if end <= x.numel():
            return x[self.start : end]
        return torch.cat([x[self.start :], x[: end - x.numel()]])

    def add_(self, out: torch.Tensor, values: torch.Tensor, alpha: float) -> None:
        """``out[support] += alpha * values``, in place."""
        values = values.to(out.dtype)
        if self.index is not None:
            out.index_add_(0, self.index, values, alpha=alpha)
            return
        head = min(self.k, out.numel() - self.start)
        out[self.start : self.start + head].add_(values[:head], alpha=alpha)
        if head < self.k:
            out[: self.k - head].add_(values[head:], alpha=alpha)


class Sparsifier(Compressor):
    """Base of ``topk``, ``randk`` and ``randblock``; wire = ``k`` fp32 values + positions."""

    name: str
    #: whether the support is random (the unbiased family) or chosen from ``x``
    random_support: bool = True

    def __init__(self, ratio: float, raw: bool = False) -> None:
        if not 0.0 < ratio <= 1.0:
            raise CompressionError(
                f"{self.name}: a ratio in (0, 1] is required, got {ratio}; e.g. "
                f"{self.name}:0.01 keeps 1% of the entries."
            )
        if raw and not self.random_support:
            raise CompressionError(f"{self.name} is biased and has no unbiased :raw form")
        self.ratio = float(ratio)
        self._raw = raw
        self.unbiased = self.random_support
        self.spec = f"{self.name}:{self.ratio:g}" + (":raw" if raw else "")

    def k(self, numel: int) -> int:
        """``k = max(1, ceil(ratio * numel))``, at most ``numel``."""
        return ratio_count(self.ratio, numel)

    def position_nbytes(self, numel: int) -> int:
        """Bytes of the position part of the payload (0 when regenerated from the seed)."""
        return 0

    def payload_nbytes(self, numel: int) -> int:
        return 4 * self.k(numel) + self.position_nbytes(numel)

    def delta(self, numel: int) -> float:
        return 1.0 - self.omega(numel) if self._raw else self.k(numel) / numel

    def omega(self, numel: int) -> float:
        if not self.random_support:
            return super().omega(numel)
        return numel / self.k(numel) - 1.0

    def raw(self) -> Compressor:
        if not self.random_support:
            return super().raw()
        return self if self._raw else type(self)(self.ratio, raw=True)

    def value_scale(self, numel: int) -> float:
        """Factor applied to the kept values when decoding: ``d/k`` for ``:raw``, else 1."""
        return numel / self.k(numel) if self._raw else 1.0

    @abstractmethod
    def select(self, x: torch.Tensor, seed: int) -> tuple[Support, torch.Tensor]:
        """The support of ``Q(x)`` and its position bytes (CPU uint8, maybe empty)."""

    @abstractmethod
    def support(self, positions: torch.Tensor, numel: int, seed: int, device) -> Support:
        """Rebuild the support from the position bytes (and the header seed)."""

    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        if layout is not None:
            return encode_each(self, x, seed, layout)
        check_finite(x, self.spec)
        support, positions = self.select(x, seed)
        values = as_float32(support.gather(x))
        return 0, torch.cat([to_bytes(values), positions])

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if layout is not None:
            return decode_each(self, payload, flags, seed, out, alpha, layout)
        numel = out.numel()
        k = self.k(numel)
        values = from_bytes(payload[: 4 * k], torch.float32, out.device)
        support = self.support(payload[4 * k :], numel, seed, out.device)
        support.add_(out, values, alpha * self.value_scale(numel))


_EMPTY = torch.empty(0, dtype=torch.uint8)


class SeededSparsifier(Sparsifier):
    """A sparsifier whose support comes from the header seed alone (``randk``,
    ``randblock``): its message is the ``k`` kept values as fp32, nothing else.

    Host kernel on segment layouts (not ``:raw``, whose ``d/k`` scale differs per segment):
    segments of at least ``BATCH_MAX`` elements are coded alone; the others in blocks, where
    each segment's support is drawn from its own segment seed (the only per-segment Python
    work) and the gather, the fp32 words and the add are one pass over the block. The bytes
    and sums are those of each segment coded alone.
    """

    def select(self, x, seed):
        return self.support(_EMPTY, x.numel(), seed, x.device), _EMPTY

    @abstractmethod
    def block_positions(self, block: Block, seeds: np.ndarray) -> np.ndarray:
        """Block position of every kept entry, grouped by segment in support order."""

    def add_block(self, block: Block, seeds: np.ndarray, values: torch.Tensor,
                  out: torch.Tensor, alpha: float) -> None:
        """``out[S_l] += alpha v_l`` for every segment of ``block`` (``out`` the block's
        elements), as :meth:`Support.add_` on each segment alone."""
        index = torch.from_numpy(self.block_positions(block, seeds))
        out.index_add_(0, index, values.to(out.dtype), alpha=alpha)

    def uses_kernel(self, t: torch.Tensor, layout: Layout | None) -> bool:
        """Whether the block kernel codes ``t`` (a layout is given, or the codec wants
        flat vectors in it too: random-block)."""
        return layout is not None and not self._raw and _host.use_host_kernels(t)

    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        if not self.uses_kernel(x, layout):
            return super().encode_payload(x, seed, layout)
        check_finite(x, self.spec)
        layout = layout or flat(x.numel(), self.payload_nbytes(x.numel()))
        message = Reserved(layout.nbytes)
        payload = message.payload
        seeds = layout.seeds(seed)
        for item in layout.items(self.spec, None, self._prepare):
            if isinstance(item, Alone):
                seg = x[item.elem : item.elem + item.size]
                support = self.support(_EMPTY, item.size, int(seeds[item.index]), seg.device)
                payload[item.byte : item.stop] = to_bytes(as_float32(support.gather(seg))).numpy()
                continue
            index = self.block_positions(item, seeds[item.lo : item.hi])
            values = x[item.elem : item.elem + item.numel].detach().numpy()[index]
            if values.dtype != np.float32:  # torch's conversion, as as_float32 does
                values = torch.from_numpy(values).to(torch.float32).numpy()
            payload[item.byte : item.stop].view(np.float32)[item.plan["word"]] = values
        return 0, message

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if not self.uses_kernel(out, layout):
            return super().decode_payload_add_(payload, flags, seed, out, alpha, layout)
        layout = layout or flat(out.numel(), self.payload_nbytes(out.numel()))
        seeds = layout.seeds(seed)
        for item in layout.items(self.spec, None, self._prepare):
            if isinstance(item, Alone):
                super().decode_payload_add_(payload[item.byte : item.stop], flags,
                                            int(seeds[item.index]),
                                            out[item.elem : item.elem + item.size], alpha)
                continue
            words = payload[item.byte : item.stop].numpy().view(np.float32)[item.plan["word"]]
            self.add_block(item, seeds[item.lo : item.hi], torch.from_numpy(words),
                           out[item.elem : item.elem + item.numel], alpha)
        return None

    def _prepare(self, block: Block) -> None:
        """Per segment ``k_l`` (array and list) and ``d_l`` (list); per kept entry its index
        within the segment, its segment's start and size (elements) and its 4-byte word."""
        sizes, plan = block.sizes, block.plan
        k = np.array([self.k(int(s)) for s in sizes], dtype=np.int64)
        plan["k"], plan["k_list"], plan["size_list"] = k, k.tolist(), sizes.tolist()
        plan["within"] = arange_within(k)
        plan["seg_start"] = np.repeat(block.starts, k)
        plan["seg_size"] = np.repeat(sizes, k)
        plan["word"] = (np.repeat(block.offsets, k) + 4 * plan["within"]) // 4


class RandK(SeededSparsifier):
    """``randk:R``: ``k`` uniformly random positions without replacement, values unscaled.

    ``Q(x) = x ⊙ 1_S`` with ``S`` a uniform ``k``-subset, ``δ = k/d`` exactly
    (``E||Q(x) - x||^2 = (1 - k/d)||x||^2``; arXiv:1907.09356 §3 "rand-k", 0.010 at 1%).
    Wire: ``k`` fp32 values only (``32 k/d`` bits per element); every receiver regenerates
    ``S`` from the header seed (:func:`choco.compress._host.sample_positions`, host numpy,
    identical on every device). ``randk:R:raw`` sends ``(d/k) x ⊙ 1_S``: unbiased,
    ``ω = d/k - 1``. Host kernel: :class:`SeededSparsifier`, on segment layouts; a flat
    vector is one ``sample_positions`` and one gather.
    """

    codec_id = 4
    name = "randk"

    def support(self, positions, numel, seed, device):
        index = _host.sample_positions(seed, numel, self.k(numel))
        return Support(index.size, torch.from_numpy(index).to(device))

    def block_positions(self, block: Block, seeds: np.ndarray) -> np.ndarray:
        plan = block.plan
        local = [_host.sample_positions(int(s), d, k) for s, d, k in
                 zip(seeds, plan["size_list"], plan["k_list"], strict=True)]
        return plan["seg_start"] + np.concatenate(local)


class RandBlock(SeededSparsifier):
    """``randblock:R``: one contiguous block of ``k`` entries at a uniform random start,
    wrapping around the end (arXiv:2009.09271, random-block sparsification).

    ``Q(x)_i = x_i`` for ``i ∈ {s, s+1, …, s+k-1} mod d`` with ``s ~ U{0, …, d-1}``; the
    wrap-around keeps every coordinate with the same probability ``k/d``, so ``δ = k/d``
    exactly, as for rand-k. Wire: ``k`` fp32 values; ``s`` is regenerated from the header
    seed (:func:`choco.compress._host.block_start`), so no offset is sent. Encoding is one
    contiguous copy. ``randblock:R:raw`` scales by ``d/k`` (unbiased, ``ω = d/k - 1``).

    Host kernel (:class:`SeededSparsifier`; flat vectors too, not ``:raw``): the positions
    of a block are ``start_l + (s_l + j) mod d_l``; decoding is one gather, ``add_`` and
    scatter.
    """

    codec_id = 5
    name = "randblock"

    def support(self, positions, numel, seed, device):
        return Support(self.k(numel), None, _host.block_start(seed, numel))

    def uses_kernel(self, t: torch.Tensor, layout: Layout | None) -> bool:
        return not self._raw and _host.use_host_kernels(t)

    def block_positions(self, block: Block, seeds: np.ndarray) -> np.ndarray:
        return self._starts_and_positions(block, seeds)[1]

    def add_block(self, block: Block, seeds: np.ndarray, values: torch.Tensor,
                  out: torch.Tensor, alpha: float) -> None:
        """``out[S_l] += alpha v_l`` with torch's ``add_`` (as :meth:`Support.add_`).

        fp32/fp64 blocks: one gather, one ``add_`` and one scatter (torch's ``a + alpha b``
        is the same in its vector body and its scalar tail there). fp16: ``add_`` rounds
        differently in the two, so the sum depends on where an element falls in the call;
        the values are converted at once but added segment by segment, as alone.
        """
        plan = block.plan
        starts, index = self._starts_and_positions(block, seeds)
        values = values.to(out.dtype)
        if out.dtype == torch.float16:
            pos = 0
            for start, k, seg in zip(starts, plan["k_list"],
                                     torch.split(out, plan["size_list"]), strict=True):
                Support(k, None, start).add_(seg, values[pos : pos + k], alpha)
                pos += k
            return
        where = torch.from_numpy(index)
        kept = out[where]
        kept.add_(values, alpha=alpha)
        out[where] = kept

    @staticmethod
    def _starts_and_positions(block: Block, seeds: np.ndarray) -> tuple[list[int], np.ndarray]:
        """``(s_l for every segment, block position of every kept entry)``:
        ``start_l + (s_l + j) mod d_l``, grouped by segment in support order."""
        plan = block.plan
        starts = [_host.block_start(int(s), d)
                  for s, d in zip(seeds, plan["size_list"], strict=True)]
        offset = np.repeat(np.array(starts, dtype=np.int64), plan["k"]) + plan["within"]
        return starts, plan["seg_start"] + offset % plan["seg_size"]

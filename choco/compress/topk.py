"""``topk:R``: keep the ``k = max(1, ceil(R d))`` entries of largest magnitude.

.. math:: Q(x)_i = x_i \\,[\\,|x_i| \\text{ among the } k \\text{ largest}\\,],
   \\qquad \\|Q(x) - x\\|^2 \\le (1 - k/d)\\,\\|x\\|^2,

so ``δ >= k/d`` (arXiv:1907.09356, §3 "top-k"; 0.085 at 1% on Gaussian vectors). The kept
values are sent unscaled: 1 is already the least-squares optimal scale of ``x_S``.

Wire: ``k`` fp32 values then ``k`` int32 positions (ascending): ``8k`` bytes plus the header.
Exact ``k`` means a fixed-size buffer, as a neighbourhood all-gather needs.

Host kernel (flat vectors and segment layouts alike, :mod:`choco.compress.layout`): a flat
vector, and a segment of at least ``SAMPLE_MIN_NUMEL`` elements with ``8 k <= d`` or of at
least ``BATCH_MAX``, is selected alone (below); the other segments of a layout in blocks,
on the exact path: per segment the kept set is ``{i : |x_i| > t_l}`` plus the lowest
positions with ``|x_i| = t_l``, up to ``k_l``, ``t_l`` the ``k_l``-th largest ``|x_i|`` (one
padded row sort for short segments, a sampled bound then ``np.partition`` for the others),
the selection itself one pass over the block, the Rice codes of all segments one bit stream
(:func:`choco.wire.rice_encode_streams`).

Selection is exact top-k by threshold sampling (the threshold estimated from a sample, as in
Deep Gradient Compression, arXiv:1712.01887; timings in docs/compressors.md): the
``k_s = ceil(1.3 k n_s/d) + 8`` largest magnitudes of a strided sample of ``n_s ≈ d/100``
entries give a threshold ``t`` below the ``k``-th largest magnitude with overwhelming
probability; the exact top-k is then taken among the candidates ``|x_i| >= t`` (about
``1.3 k`` of them). Whenever at least ``k`` entries pass, every one of the true top-k does
(the ``k``-th largest is ``>= t``), so the set equals ``torch.topk``'s up to ties; with
fewer, the full ``torch.topk`` runs instead. Entries equal to ``t`` are taken only when
fewer than ``k`` are strictly above it, lowest positions first: inputs with many exact zeros
or ties (sparse gradients, ReLU layers, late residuals) cost one pass, not a sort.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..wire import (
    rice_decode,
    rice_decode_streams,
    rice_encode,
    rice_encode_streams,
    rice_nbytes,
    rice_parameter,
    rice_streams,
)
from ..wire.framing import Reserved
from . import _host
from .base import CompressionError, as_float32, check_finite, from_bytes, to_bytes
from .layout import Alone, Block, Layout, arange_within, flat
from .sparse import Sparsifier, Support

#: below this many elements the sampling pass is not worth it: plain ``torch.topk``
SAMPLE_MIN_NUMEL = 1 << 16
#: sample stride (``n_s ≈ d / SAMPLE_STRIDE``) and oversampling factor of the threshold
SAMPLE_STRIDE = 100
OVERSAMPLE = 1.3
#: sample size of the threshold of a longer segment's top-k in a batched block
SAMPLE_ROWS = 256
#: segments up to this long find their k-th largest magnitude in one padded row sort
SMALL_SEGMENT = 256


def _sample_rank(numel: int, k: int, sample: int) -> int:
    return min(sample, math.ceil(OVERSAMPLE * k * sample / numel) + 8)


def _topk_exact(ax: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(ax, k, sorted=False).indices


def _topk_host(x: torch.Tensor, k: int) -> torch.Tensor | None:
    """Threshold-sampling top-k on CPU with chunked numpy; None if too few candidates.

    Entries strictly above the sampled threshold ``t`` are candidates; if fewer than ``k``
    are, the rest are the lowest positions with ``|x_i| = t`` (ties broken by position), so
    inputs full of zeros or of equal values cost one pass instead of a full sort.
    """
    xn = x.detach().numpy()
    numel = xn.size
    sample = np.abs(xn[::SAMPLE_STRIDE])
    rank = _sample_rank(numel, k, sample.size)
    threshold = np.partition(sample, sample.size - rank)[sample.size - rank]
    above, equal = [], []
    scratch = np.empty(min(_host.CHUNK, numel), dtype=xn.dtype)
    n_above = n_equal = 0
    for start, stop in _host.chunks(numel):
        a = np.abs(xn[start:stop], out=scratch[: stop - start])
        hits = np.flatnonzero(a > threshold) + start
        above.append(hits)
        n_above += hits.size
        if n_above + n_equal < k:  # ties are needed only while fewer than k are above
            ties = np.flatnonzero(a == threshold)[: k - n_above - n_equal] + start
            equal.append(ties)
            n_equal += ties.size
    candidates = np.concatenate(above)
    if candidates.size >= k:
        mags = np.abs(xn[candidates])
        chosen = candidates[np.argpartition(mags, candidates.size - k)[candidates.size - k :]]
    else:
        ties = np.sort(np.concatenate(equal))
        ties = ties[np.abs(xn[ties]) == threshold]  # chunks scanned before enough were above
        if candidates.size + ties.size < k:
            return None
        chosen = np.concatenate([candidates, ties[: k - candidates.size]])
    return torch.from_numpy(np.sort(chosen))


def _topk_device(x: torch.Tensor, k: int) -> torch.Tensor | None:
    """Threshold-sampling top-k with torch ops on ``x``'s device; None if too few pass.

    Same rule as :func:`_topk_host`: strictly above the threshold, then the lowest
    positions equal to it.
    """
    ax = x.abs()
    sample = ax[::SAMPLE_STRIDE]
    rank = _sample_rank(ax.numel(), k, sample.numel())
    threshold = torch.topk(sample, rank, sorted=False).values.min()
    candidates = torch.nonzero(ax > threshold).view(-1)
    if candidates.numel() >= k:
        chosen = candidates[_topk_exact(ax[candidates], k)]
    else:
        ties = torch.nonzero(ax == threshold).view(-1)[: k - candidates.numel()]
        if candidates.numel() + ties.numel() < k:
            return None
        chosen = torch.cat([candidates, ties])
    return torch.sort(chosen).values


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest ``|x|``, ascending (int64, on ``x``'s device).

    Among equal magnitudes at the ``k``-th largest, the lowest positions are taken, on every
    path (sampled or not, numpy or torch): the selection is deterministic.
    """
    numel = x.numel()
    if k >= numel:
        return torch.arange(numel, device=x.device)
    idx = None
    if numel >= SAMPLE_MIN_NUMEL and k * 8 <= numel:
        idx = _topk_host(x, k) if _host.use_host_kernels(x) else _topk_device(x, k)
    if idx is None:
        ax = x.abs()
        kth = torch.topk(ax, k, sorted=False).values.min()  # the k-th largest magnitude
        above = torch.nonzero(ax > kth).view(-1)
        ties = torch.nonzero(ax == kth).view(-1)[: k - above.numel()]  # lowest positions
        idx = torch.sort(torch.cat([above, ties])).values
    return idx


class TopK(Sparsifier):
    """Top-k sparsification with ``k = max(1, ceil(ratio * d))``; ``δ >= k/d``.

    ``topk:R:rice`` codes the positions as Rice-coded gaps instead of int32
    (:func:`choco.wire.rice_encode`, parameter ``b*`` from ``p = k/d``), in a fixed-size
    buffer of ``k (b* + 1) + floor((d - k) / 2^b*)`` bits: about 8.5 bits per position at
    ``p = 1%`` instead of 32 (``0.405`` instead of ``0.64`` bits per element).
    """

    codec_id = 3
    name = "topk"
    random_support = False

    rice = False

    def __init__(self, ratio: float) -> None:
        super().__init__(ratio)

    def rice_b(self, numel: int) -> int:
        return rice_parameter(self.k(numel) / numel)

    def position_nbytes(self, numel: int) -> int:
        k = self.k(numel)
        return rice_nbytes(k, numel, self.rice_b(numel)) if self.rice else 4 * k

    def select(self, x, seed):
        idx = topk_indices(x, self.k(x.numel()))
        if self.rice:
            coded = rice_encode(idx.cpu().numpy(), x.numel(), self.rice_b(x.numel()))
            return Support(idx.numel(), idx), torch.from_numpy(coded)
        return Support(idx.numel(), idx), to_bytes(idx.to(torch.int32))

    def support(self, positions, numel, seed, device):
        if self.rice:
            try:
                idx = rice_decode(positions.numpy(), self.k(numel), numel, self.rice_b(numel))
            except ValueError as exc:
                raise CompressionError(f"{self.spec}: {exc}; corrupt buffer") from None
            return Support(idx.size, torch.from_numpy(idx).to(device))
        idx = from_bytes(positions, torch.int32, device).long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise CompressionError(f"{self.spec}: positions out of range; corrupt buffer")
        return Support(idx.numel(), idx)

    # ------------------------------------------------------------------ host kernel
    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        if not _host.use_host_kernels(x):
            return super().encode_payload(x, seed, layout)
        check_finite(x, self.spec)
        layout = layout or flat(x.numel(), self.payload_nbytes(x.numel()))
        message = Reserved(layout.nbytes)
        payload = message.payload
        for item in layout.items(self.spec, self._alone(layout.sizes), self._prepare):
            if isinstance(item, Alone):
                seg = x[item.elem : item.elem + item.size]
                support, positions = self.select(seg, 0)
                values = to_bytes(as_float32(support.gather(seg))).numpy()
                payload[item.byte : item.byte + values.size] = values
                payload[item.byte + values.size : item.stop] = positions.numpy()
                continue
            plan = item.plan
            xn = x[item.elem : item.elem + item.numel].detach().numpy()
            chosen = _select_block(xn, item)
            values = xn[chosen]
            if values.dtype != np.float32:  # torch's conversion, as as_float32 does
                values = torch.from_numpy(values).to(torch.float32).numpy()
            out = payload[item.byte : item.stop]
            out[plan["value"]] = values.view(np.uint8)
            local = chosen - plan["seg_start"]
            if self.rice:
                out[plan["code"]] = rice_encode_streams(local, plan["rice"])
            else:
                out[plan["position"]] = local.astype(np.int32).view(np.uint8)
        return 0, message

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if not _host.use_host_kernels(out):
            return super().decode_payload_add_(payload, flags, seed, out, alpha, layout)
        layout = layout or flat(out.numel(), self.payload_nbytes(out.numel()))
        data = payload.numpy()
        items = layout.items(self.spec, self._alone(layout.sizes), self._prepare)
        where = [self._block_positions(data, item) for item in items]  # all checked first
        for item, index in zip(items, where, strict=True):
            if isinstance(item, Alone):
                super().decode_payload_add_(payload[item.byte : item.stop], flags, seed,
                                            out[item.elem : item.elem + item.size], alpha)
                continue
            values = torch.from_numpy(data[item.byte : item.stop][item.plan["value"]]
                                      .view(np.float32))
            out[item.elem : item.elem + item.numel].index_add_(
                0, torch.from_numpy(index), values.to(out.dtype), alpha=alpha * 1.0)
        return None

    def _alone(self, sizes: np.ndarray) -> np.ndarray:
        """Segments selected alone: the sampled path of :func:`topk_indices`."""
        k = np.array([self.k(int(s)) for s in sizes])
        return (sizes >= SAMPLE_MIN_NUMEL) & (k * 8 <= sizes)

    def _block_positions(self, data: np.ndarray, item: Block | Alone) -> np.ndarray | None:
        """Block positions of every kept entry of a block (None for a segment alone); raises
        the error of the first segment whose positions do not decode."""
        if isinstance(item, Alone):
            return None
        plan, payload = item.plan, data[item.byte : item.stop]
        if self.rice:
            local = rice_decode_streams(payload[plan["code"]], plan["rice"])
        else:
            local = payload[plan["position"]].view(np.int32).astype(np.int64)
            if local.size and local.min() < 0:
                local = None
        if local is None or (local.size and (local >= plan["seg_size"]).any()):
            for j, d in enumerate(item.sizes.tolist()):  # the segment's own error
                at = int(item.offsets[j]) + 4 * int(plan["k"][j])
                end = at + self.position_nbytes(d)
                self.support(torch.from_numpy(payload[at:end]), d, 0, torch.device("cpu"))
            raise CompressionError(f"{self.spec}: positions out of range; corrupt buffer")
        return local + plan["seg_start"]

    def _prepare(self, block: Block) -> None:
        sizes, starts, plan = block.sizes, block.starts, block.plan
        k = np.array([self.k(int(s)) for s in sizes], dtype=np.int64)
        plan["k"] = k
        plan["seg_start"] = np.repeat(starts, k)
        plan["seg_size"] = np.repeat(sizes, k)
        value_at = np.repeat(block.offsets, k) + 4 * arange_within(k)
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
            nrows = -(-d // stride)
            rank = min(nrows, math.ceil(OVERSAMPLE * int(k[j]) * nrows / d) + 8)
            large.append((int(j), start, start + d, stride, nrows - rank))
        plan["large"] = large
        if not self.rice:
            position_at = value_at + 4 * np.repeat(k, k)
            plan["position"] = (position_at[:, None] + np.arange(4)).reshape(-1)
            return
        b = np.array([self.rice_b(int(s)) for s in sizes], dtype=np.int64)
        streams = rice_streams(k, sizes, b)
        plan["rice"] = streams
        plan["code"] = np.repeat(block.offsets + 4 * k, streams.nbytes) + \
            arange_within(streams.nbytes)


def _select_block(x: np.ndarray, block: Block) -> np.ndarray:
    """Block positions (ascending, grouped by segment) of every segment's top-k.

    Short segments get their ``t_l`` exactly (row sort); longer ones first a lower
    bound from a strided sample of :data:`SAMPLE_ROWS` magnitudes (its
    ``ceil(1.3 k_l n_s / d_l) + 8``-th largest, as :func:`_topk_host` does),
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


class TopKRice(TopK):
    """``topk:R:rice``: :class:`TopK` with Rice-coded positions (its own codec id)."""

    codec_id = 9
    rice = True

    def __init__(self, ratio: float) -> None:
        super().__init__(ratio)
        self.spec += ":rice"

"""Top-k selection: the positions of the ``k`` largest ``|x_i|`` (top-k, SBC, lgc).

Selection is exact top-k by threshold sampling (the threshold estimated from a sample, as in
Deep Gradient Compression, arXiv:1712.01887; timings in docs/compressors.md): the
``k_s = ceil(1.3 k n_s/d) + 8`` largest magnitudes of a strided sample of ``n_s ≈ d/100``
entries give a threshold ``t`` below the ``k``-th largest magnitude with overwhelming
probability; the exact top-k is then taken among the candidates ``|x_i| >= t`` (about
``1.3 k`` of them). Whenever at least ``k`` entries pass, every one of the true top-k does
(the ``k``-th largest is ``>= t``), so the set equals ``torch.topk``'s up to ties; with
fewer, the full ``torch.topk`` runs instead. Entries equal to ``t`` are taken only when
fewer than ``k`` are strictly above it, lowest positions first: inputs with many exact zeros
or ties (sparse gradients, ReLU layers, late residuals) cost one pass, not a sort. When at
least ``k`` are strictly above ``t``, the ``k`` largest among them are taken with
``np.argpartition`` (``torch.topk`` on a device): ties at the ``k``-th largest magnitude
are then broken by that call, the same for the same input, not by position.

The short segments of a layout are selected together (:func:`select_block`): per segment
the kept set is ``{i : |x_i| > t_l}`` plus the lowest positions with ``|x_i| = t_l``, up to
``k_l``, the same set as :func:`topk_indices` gives for the segment alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _host
from .layout import Block

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
    inputs full of zeros or of equal values cost one pass instead of a full sort. If ``k``
    or more are, the ``k`` largest candidates come from ``np.argpartition``, which breaks
    ties at the ``k``-th largest magnitude its own (deterministic) way.
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

    The selection is deterministic (the same input gives the same positions). Among equal
    magnitudes at the ``k``-th largest the lowest positions are taken, except on the
    sampled path (``numel >= SAMPLE_MIN_NUMEL`` and ``8 k <= numel``) when ``k`` or more
    entries lie strictly above the sampled threshold: there ``np.argpartition`` (or
    ``torch.topk``) breaks those ties.
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


def plan_selection(block: Block, k: np.ndarray) -> None:
    """Plan :func:`select_block` for a block whose segments keep ``k`` entries each:
    short segments in buckets of padded rows (widths 8, 16, …, :data:`SMALL_SEGMENT`), the
    longer ones with the stride and rank of their sampled lower bound."""
    sizes, starts, plan = block.sizes, block.starts, block.plan
    plan["k"] = k
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


def select_block(x: np.ndarray, block: Block) -> np.ndarray:
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

"""``topk:R``: keep the ``k = max(1, ceil(R d))`` entries of largest magnitude.

.. math:: Q(x)_i = x_i \\,[\\,|x_i| \\text{ among the } k \\text{ largest}\\,],
   \\qquad \\|Q(x) - x\\|^2 \\le (1 - k/d)\\,\\|x\\|^2,

so ``δ >= k/d`` (arXiv:1907.09356, §3 "top-k"; 0.085 at 1% on Gaussian vectors). The kept
values are sent unscaled: 1 is already the least-squares optimal scale of ``x_S``.

Wire: ``k`` fp32 values then ``k`` int32 positions (ascending): ``8k`` bytes plus the header.
Exact ``k`` means a fixed-size buffer, as a neighbourhood all-gather needs.

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

from ..wire import rice_decode, rice_encode, rice_nbytes, rice_parameter
from . import _host
from .base import CompressionError, from_bytes, to_bytes
from .sparse import Sparsifier, Support

#: below this many elements the sampling pass is not worth it: plain ``torch.topk``
SAMPLE_MIN_NUMEL = 1 << 16
#: sample stride (``n_s ≈ d / SAMPLE_STRIDE``) and oversampling factor of the threshold
SAMPLE_STRIDE = 100
OVERSAMPLE = 1.3


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


class TopKRice(TopK):
    """``topk:R:rice``: :class:`TopK` with Rice-coded positions (its own codec id)."""

    codec_id = 9
    rice = True

    def __init__(self, ratio: float) -> None:
        super().__init__(ratio)
        self.spec += ":rice"

"""``topk:R``: keep the ``k = max(1, ceil(R d))`` entries of largest magnitude.

.. math:: Q(x)_i = x_i \\,[\\,|x_i| \\text{ among the } k \\text{ largest}\\,],
   \\qquad \\|Q(x) - x\\|^2 \\le (1 - k/d)\\,\\|x\\|^2,

so ``δ >= k/d`` (arXiv:1907.09356, §3 "top-k"; 0.085 at 1% on Gaussian vectors).

Wire: ``k`` fp32 values then ``k`` int32 positions (ascending): ``8k`` bytes plus the header.
Exact ``k`` means a fixed-size buffer, as a neighbourhood all-gather needs.
"""

from __future__ import annotations

import torch

from .base import CompressionError, Compressor, check_finite, from_bytes, ratio_count, to_bytes


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest ``|x|``, ascending (int64, on ``x``'s device)."""
    if k >= x.numel():
        return torch.arange(x.numel(), device=x.device)
    idx = torch.topk(x.abs(), k, sorted=False).indices
    return torch.sort(idx).values


class TopK(Compressor):
    """Top-k sparsification with ``k = max(1, ceil(ratio * d))``; ``δ >= k/d``."""

    codec_id = 3

    def __init__(self, ratio: float) -> None:
        if not 0.0 < ratio <= 1.0:
            raise CompressionError(
                f"topk: a ratio in (0, 1] is required, got {ratio}; e.g. topk:0.01 keeps 1%."
            )
        self.ratio = ratio
        self.spec = f"topk:{ratio:g}"

    def k(self, numel: int) -> int:
        return ratio_count(self.ratio, numel)

    def payload_nbytes(self, numel: int) -> int:
        return 8 * self.k(numel)

    def delta(self, numel: int) -> float:
        return self.k(numel) / numel

    def _encode(self, x: torch.Tensor, seed: int) -> tuple[int, torch.Tensor]:
        idx = topk_indices(x, self.k(x.numel()))
        values = x[idx].to(torch.float32)
        check_finite(values, self.spec)
        return 0, torch.cat([to_bytes(values), to_bytes(idx.to(torch.int32))])

    def _decode_add_(self, payload, flags, seed, out, alpha):
        k = self.k(out.numel())
        values = from_bytes(payload[: 4 * k], torch.float32, out.device)
        idx = from_bytes(payload[4 * k :], torch.int32, out.device).long()
        if k and (int(idx.min()) < 0 or int(idx.max()) >= out.numel()):
            raise CompressionError(f"{self.spec}: positions out of range; corrupt buffer")
        out.index_add_(0, idx, values.to(out.dtype), alpha=alpha)

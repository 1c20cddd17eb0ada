"""The learning-rate schedule of ``choco-train``: per-node peaks, linear warm-up, ÷10 steps.

Peak LR of node ``i`` (``--lr-scaling paper``, the CHOCO authors' rule, docs/algorithms.md)::

    peak_i = lr · batch / base_batch · |N_i ∪ {i}|      (n instead of |N_i ∪ {i}| for all-reduce)

and ``peak_i = lr`` with ``--lr-scaling none``. The LR rises linearly from ``lr`` to the peak
over ``warmup_epochs`` (per iteration), then is divided by 10 at each milestone epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LRSchedule", "peak_lrs"]


def peak_lrs(lr: float, scaling: str, batch_size: int, base_batch_size: int,
             group_sizes: Sequence[int]) -> list[float]:
    """Per-node peak LRs; ``group_sizes[i]`` is ``|N_i ∪ {i}|`` (or ``n`` for all-reduce)."""
    base = base_batch_size or batch_size
    peaks = []
    for group in group_sizes:
        factor = 1.0
        if scaling == "paper":
            factor = batch_size / base * group
        peaks.append(lr * factor)
    return peaks


@dataclass(frozen=True)
class LRSchedule:
    """``lr`` → per-node peak (linear warm-up), then ÷10 at each milestone."""

    lr: float
    peaks: tuple[float, ...]
    steps_per_epoch: int
    warmup_epochs: float = 0.0
    milestones: tuple[int, ...] = ()

    def at(self, rank: int, epoch: int, batch: int) -> float:
        """The LR of node ``rank`` at minibatch ``batch`` of ``epoch`` (both from 0)."""
        peak = self.peaks[rank]
        step = epoch * self.steps_per_epoch + batch
        warm = self.warmup_epochs * self.steps_per_epoch
        lr = self.lr + (peak - self.lr) * step / warm if step < warm else peak
        return lr * 0.1 ** sum(epoch >= m for m in self.milestones)

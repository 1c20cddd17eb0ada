"""Batch-wise image augmentation in torch, driven by an explicit :class:`torch.Generator`.

The CIFAR-10 recipe of He et al. (arXiv:1512.03385, §4.2), used for CHOCO-SGD's ResNet-20
runs (arXiv:1907.09356, §5): pad 4 pixels on each side, take a random 32×32 crop, flip
horizontally with probability 1/2. All randomness comes from the generator passed in, so a
batch is reproducible from its seed alone; random numbers are drawn on the CPU and moved
to the batch's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import DataError


class RandomCropFlip:
    """Random crop after ``padding`` pixels of padding, then a random horizontal flip.

    Parameters
    ----------
    padding
        Pixels added on every side before cropping back to the input size (4 for CIFAR).
    fill
        Value of the padded pixels per channel. Pass the *normalized* value of black,
        ``-mean / std``, to match padding the raw image with zeros before normalizing.
    flip
        Whether to flip horizontally with probability 1/2.
    """

    def __init__(self, padding: int = 4, fill: Sequence[float] | None = None, flip: bool = True):
        if padding < 0:
            raise DataError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.fill = None if fill is None else torch.tensor(list(fill), dtype=torch.float32)
        self.flip = flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch ``x`` of shape ``(B, C, H, W)``; returns a new tensor, same shape."""
        if x.dim() != 4:
            raise DataError(
                f"RandomCropFlip needs a (B, C, H, W) batch, got shape {tuple(x.shape)}"
            )
        b, c, h, w = x.shape
        p = self.padding
        padded = x.new_zeros((b, c, h + 2 * p, w + 2 * p))
        if self.fill is not None:
            if self.fill.numel() != c:
                raise DataError(f"fill has {self.fill.numel()} values for {c} channels")
            padded += self.fill.to(device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        padded[:, :, p : p + h, p : p + w] = x
        top = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        left = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        flipped = (
            torch.rand(b, generator=generator) < 0.5
            if self.flip
            else torch.zeros(b, dtype=torch.bool)
        )
        cols = torch.arange(w)
        # a flip reads the crop's columns right to left: one gather does crop and flip
        cols = torch.where(flipped[:, None], left[:, None] + (w - 1 - cols), left[:, None] + cols)
        rows = top[:, None] + torch.arange(h)
        rows, cols = rows.to(x.device), cols.to(x.device)
        batch_idx = torch.arange(b, device=x.device)[:, None, None, None]
        chan_idx = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"

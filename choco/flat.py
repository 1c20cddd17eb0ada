"""One flat buffer holding all parameters of a model, the parameters being views into it.

Gossip runs over one contiguous vector per step (one message, buffers allocated once),
while the model and any ``torch.optim.Optimizer`` keep using the same ``Parameter`` objects:
only their storage moves into the buffer. Segment sizes (one per tensor) let compressors act
per tensor, as the CHOCO paper does per layer (arXiv:1907.09356, §5).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .errors import FlatError


class FlatParameters:
    """Move ``params`` into one flat buffer; each ``p.data`` becomes a view of it.

    Attributes
    ----------
    buffer : torch.Tensor
        The flat vector ``x`` gossiped between nodes.
    sizes : list[int]
        ``numel`` of each parameter, in order (the per-tensor segments).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter]) -> None:
        self.params = [p for p in params]
        if not self.params:
            raise FlatError("no parameters to gossip: the model has no parameters")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) != 1 or len(devices) != 1:
            raise FlatError(
                f"all parameters must share one dtype and device to live in one buffer, got "
                f"dtypes {sorted(map(str, dtypes))} on {sorted(map(str, devices))}; call "
                "model.to(dtype, device) first."
            )
        self.sizes = [p.numel() for p in self.params]
        first = self.params[0]
        self.buffer = torch.empty(sum(self.sizes), dtype=first.dtype, device=first.device)
        offset = 0
        for p, n in zip(self.params, self.sizes, strict=True):
            view = self.buffer[offset : offset + n].view_as(p)
            view.copy_(p.data)
            p.data = view
            offset += n

    def grad_buffer(self) -> torch.Tensor:
        """All gradients as one new flat tensor (zeros where a gradient is missing)."""
        return torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in self.params
        ])

    def set_grads(self, flat: torch.Tensor) -> None:
        """Write ``flat`` back into each parameter's ``.grad``."""
        offset = 0
        for p, n in zip(self.params, self.sizes, strict=True):
            g = flat[offset : offset + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            offset += n

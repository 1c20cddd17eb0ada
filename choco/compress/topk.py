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

Selection: :mod:`choco.compress.selection` (threshold sampling for long vectors, exact
and batched for short segments). Ties at the ``k``-th largest magnitude go to the lowest
positions, except on the sampled path of a long vector when at least ``k`` entries lie
strictly above the sampled threshold: there the tied entries kept are the ones
``np.argpartition`` (or ``torch.topk`` on a device) returns, the same for the same input
but not necessarily the lowest positions.
"""

from __future__ import annotations

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
from .selection import SAMPLE_MIN_NUMEL, plan_selection, select_block, topk_indices
from .sparse import Sparsifier, Support

__all__ = ["SAMPLE_MIN_NUMEL", "TopK", "TopKRice", "topk_indices"]


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
                found = rice_decode(positions.numpy(), self.k(numel), numel, self.rice_b(numel))
            except ValueError as exc:
                raise CompressionError(f"{self.spec}: {exc}; corrupt buffer") from None
            return Support(found.size, torch.from_numpy(found).to(device))
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
        for item in layout.items(self.spec, self._alone, self._prepare):
            if isinstance(item, Alone):
                seg = x[item.elem : item.elem + item.size]
                support, positions = self.select(seg, 0)
                values = to_bytes(as_float32(support.gather(seg))).numpy()
                payload[item.byte : item.byte + values.size] = values
                payload[item.byte + values.size : item.stop] = positions.numpy()
                continue
            plan = item.plan
            xn = x[item.elem : item.elem + item.numel].detach().numpy()
            chosen = select_block(xn, item)
            values = xn[chosen]
            if values.dtype != np.float32:  # torch's conversion, as as_float32 does
                values = torch.from_numpy(values).to(torch.float32).numpy()
            out = payload[item.byte : item.stop]
            local = chosen - plan["seg_start"]
            if self.rice:  # values at any byte offset after a segment's Rice code
                out[plan["value"]] = values.view(np.uint8)
                out[plan["code"]] = rice_encode_streams(local, plan["rice"])
            else:  # 4-byte values and positions on 4-byte offsets: one index per entry
                out.view(np.float32)[plan["value_word"]] = values
                out.view(np.int32)[plan["position_word"]] = local
        return 0, message

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if layout is None or not _host.use_host_kernels(out):
            # a flat vector is one segment coded alone: the vector kernel, without the cut
            return super().decode_payload_add_(payload, flags, seed, out, alpha, layout)
        data = payload.numpy()
        items = layout.items(self.spec, self._alone, self._prepare)
        where = [self._block_positions(data, item) for item in items]  # all checked first
        for item, index in zip(items, where, strict=True):
            if isinstance(item, Alone):
                super().decode_payload_add_(payload[item.byte : item.stop], flags, seed,
                                            out[item.elem : item.elem + item.size], alpha)
                continue
            block = data[item.byte : item.stop]
            plan = item.plan
            values = torch.from_numpy(block[plan["value"]].view(np.float32) if self.rice
                                      else block.view(np.float32)[plan["value_word"]])
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
            local = payload.view(np.int32)[plan["position_word"]].astype(np.int64)
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
        plan["seg_start"] = np.repeat(starts, k)
        plan["seg_size"] = np.repeat(sizes, k)
        value_at = np.repeat(block.offsets, k) + 4 * arange_within(k)
        plan_selection(block, k)
        if not self.rice:
            # segments of 8 k bytes after 16-byte headers: every value and position sits on
            # a 4-byte offset, so they are gathered and scattered as words
            if (block.stop - block.byte) % 4 or (value_at % 4).any():
                raise RuntimeError(f"{self.spec}: a segment payload starts off a 4-byte "
                                   "boundary; the layout does not frame top-k messages")
            plan["value_word"] = value_at // 4
            plan["position_word"] = (value_at + 4 * np.repeat(k, k)) // 4
            return
        plan["value"] = (value_at[:, None] + np.arange(4)).reshape(-1)
        b = np.array([self.rice_b(int(s)) for s in sizes], dtype=np.int64)
        streams = rice_streams(k, sizes, b)
        plan["rice"] = streams
        plan["code"] = np.repeat(block.offsets + 4 * k, streams.nbytes) + \
            arange_within(streams.nbytes)


class TopKRice(TopK):
    """``topk:R:rice``: :class:`TopK` with Rice-coded positions (its own codec id)."""

    codec_id = 9
    rice = True

    def __init__(self, ratio: float) -> None:
        super().__init__(ratio)
        self.spec += ":rice"

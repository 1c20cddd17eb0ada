"""``identity``: no compression, ``Q(x) = x``, ``δ = 1``."""

from __future__ import annotations

import torch

from ..wire.framing import Reserved
from .base import (
    HEADER_SIZE,
    CompressionError,
    Compressor,
    check_finite,
    from_bytes,
    to_bytes,
)
from .layout import Layout, decode_each, encode_each

#: dtype codes carried in the header flags, so a receiver knows the element size.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


class Identity(Compressor):
    """Send ``x`` as it is, in its own dtype: ``d * itemsize`` bytes, ``δ = 1``.

    With ``γ = 1`` CHOCO-Gossip with this operator is exact gossip averaging ``x ← W x``
    (arXiv:1902.00340, §3). The payload size depends on the dtype, so :meth:`nbytes`
    takes the vector's ``dtype`` (float32 by default).
    """

    codec_id = 1
    unbiased = True
    _raw = True

    def __init__(self) -> None:
        self.spec = "identity"

    def nbytes(self, numel: int, dtype: torch.dtype = torch.float32) -> int:
        return HEADER_SIZE + numel * torch.empty((), dtype=dtype).element_size()

    def payload_nbytes(self, numel: int) -> int:
        return 4 * numel

    def _message_nbytes(self, numel: int, flags: int) -> int:
        return self.nbytes(numel, CODE_DTYPES[flags])

    def delta(self, numel: int) -> float:
        return 1.0

    def omega(self, numel: int) -> float:
        return 0.0

    def raw(self) -> Compressor:
        return self

    def encode_payload(self, x: torch.Tensor, seed: int,
                       layout: Layout | None = None) -> tuple[int, torch.Tensor | Reserved]:
        if layout is not None:
            return encode_each(self, x, seed, layout)
        if x.dtype not in DTYPE_CODES:
            raise CompressionError(f"identity: dtype {x.dtype} is not supported")
        check_finite(x.sum(), self.spec)
        return DTYPE_CODES[x.dtype], to_bytes(x)

    def decode_payload_add_(self, payload: torch.Tensor, flags: int, seed: int,
                            out: torch.Tensor, alpha: float,
                            layout: Layout | None = None) -> None:
        if layout is not None:
            return decode_each(self, payload, flags, seed, out, alpha, layout)
        values = from_bytes(payload, CODE_DTYPES[flags], out.device)
        out.add_(values.to(out.dtype), alpha=alpha)

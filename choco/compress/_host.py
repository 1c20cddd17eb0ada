"""Shared randomness and the switch between host (numpy) and device (torch) kernels.

Randomness is keyed by the 64-bit seed carried in every message header
(:mod:`choco.wire.framing`):

* **Shared** randomness (rand-k positions, the random-block start) must be regenerated
  bit for bit by every receiver on any device, so it is drawn on the host from the *raw*
  stream of numpy's ``SFC64`` bit generator, whose output (unlike ``Generator`` methods) is
  guaranteed stable across numpy versions, and only then moved to the tensor's device.
* **Sender-side** randomness (stochastic rounding in natural, dither, QSGD) is never
  regenerated: on CPU it comes from ``SFC64`` (numpy's fastest generator, several times
  faster than torch's CPU generator), on other devices from ``torch.Generator(device)``.

CPU tensors are processed by chunked numpy kernels (chunks of :data:`CHUNK` elements stay in
the L2 cache and reuse the same heap blocks, so no large temporaries are page-faulted);
other devices use whole-tensor torch operations. Setting :data:`HOST_KERNELS` to ``False``
runs the device code on CPU too, which is how the tests cover the CUDA code path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

#: use the numpy kernels for CPU tensors (tests switch this off to cover the torch path)
HOST_KERNELS = True
#: elements per chunk of the numpy kernels (a multiple of 8 and of every bucket size used)
CHUNK = 1 << 18


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def use_host_kernels(t: torch.Tensor) -> bool:
    """Whether ``t`` (a CPU tensor numpy can view) is processed by the numpy kernels."""
    return HOST_KERNELS and t.device.type == "cpu" and t.dtype in _NUMPY_FLOATS


def add_into(out: np.ndarray, values: np.ndarray, alpha: float) -> None:
    """``out += alpha * values`` in ``out``'s precision, in place (single-threaded numpy).

    Decoders add chunk by chunk with numpy rather than ``Tensor.add_``: torch's thread pool
    costs more than the work on 1 MiB chunks, and stalls when the cores are shared.
    """
    if alpha != 1.0 or values.dtype != out.dtype:
        values = np.multiply(values, out.dtype.type(alpha), dtype=out.dtype)
    np.add(out, values, out=out)


def chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks covering ``range(n)``."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def host_bitgen(seed: int) -> np.random.SFC64:
    """The host bit generator of ``seed`` (SeedSequence-hashed, raw stream version-stable)."""
    return np.random.SFC64(seed & 0xFFFFFFFFFFFFFFFF)


def device_generator(seed: int, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (sender-side randomness)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed & 0xFFFFFFFFFFFFFFFF)
    return gen


def random_u32(bitgen: np.random.SFC64, n: int) -> np.ndarray:
    """``n`` uniform uint32 from the raw 64-bit stream (two per draw)."""
    return bitgen.random_raw((n + 1) // 2).view(np.uint32)[:n]


def block_start(seed: int, numel: int) -> int:
    """Start of the random block, uniform on ``{0, …, numel-1}`` (first raw draw mod d)."""
    return int(host_bitgen(seed).random_raw() % np.uint64(numel))


def sample_positions(seed: int, numel: int, k: int) -> np.ndarray:
    """``k`` distinct positions of ``range(numel)``, uniformly at random, ascending (int64).

    Sparse draws (``k <= numel/32``) take the first ``k`` distinct values of the raw stream
    modulo ``numel`` (a uniform ``k``-subset by symmetry; the modulo's bias is below
    ``numel / 2^64``), about ``k`` draws. Dense draws give every position a raw 64-bit key and
    keep the ``k`` smallest keys (exchangeable keys: a uniform ``k``-subset; ties, of
    probability ``~numel²/2^65``, are broken deterministically). Depends only on
    ``(seed, numel, k)``: every receiver regenerates the same set.
    """
    if k >= numel:
        return np.arange(numel, dtype=np.int64)
    bitgen = host_bitgen(seed)
    if 32 * k > numel:
        keys = bitgen.random_raw(numel)
        return np.sort(np.argpartition(keys, k - 1)[:k]).astype(np.int64)
    draw = int(numel * (math.log(numel) - math.log(numel - k)) * 1.05) + 16
    stream = np.empty(0, dtype=np.int64)
    while True:
        new = (bitgen.random_raw(draw) % np.uint64(numel)).astype(np.int64)
        stream = np.concatenate([stream, new])
        values, first = np.unique(stream, return_index=True)
        if values.size >= k:
            return np.sort(stream[np.sort(first)[:k]])
        draw = int((k - values.size) * 2) + 16

"""Per-tensor compression against independent references, beyond the first batched block.

Two kinds of expectation, neither taken from the code under test:

* **The wire format, rebuilt in numpy.** For the families with batched per-tensor kernels
  (sign, top-k with int32 or Rice positions, random-block, rand-k, natural) the whole per-tensor
  message is rebuilt here from the format's definition: an outer header, then per segment
  ``l`` a header with the segment seed ``splitmix64(seed + φ (l + 1))`` and that family's
  payload (top-k by a stable sort, Rice codes bit by bit, SFC64 draws for the random
  start, the rand-k positions and the rounding). The bytes must be equal (sign's fp32
  scale, a float sum, to 1e-5), and the decoded sum must be ``out + α Q(x)``.
* **The per-segment path.** For every family, the per-tensor message must be the
  concatenation of each segment compressed alone with its segment seed, and decode to the
  same sum.

Both run with a small block limit, so that layouts make several batched blocks (and some
segments are coded alone), and on one layout of more than 2^20 parameters with the real
limit.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from choco.compress import PerTensor, _host, make_compressor
from choco.compress import layout as blocks_module
from choco.compress.base import HEADER_SIZE, CompressionError
from choco.models import make_model

PHI = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1
CODECS = {"sign": 2, "topk": 3, "randk": 4, "rice": 9, "randblock": 5, "natural": 6,
          "per-tensor": 100}


def model_sizes(name: str) -> list[int]:
    return [p.numel() for p in make_model(name).parameters()]


#: (layout, block limit): every layout makes several blocks under its limit
LAYOUTS = {
    "ones": ([1] * 150, 64),
    "sevens": ([7] * 40, 64),
    "mixed": ([8, 9, 1, 7, 16, 3, 30, 25, 1, 60, 2, 63, 64, 65, 200] * 3, 64),
    "resnet8": (model_sizes("resnet8"), 4096),
}
#: more than 2^20 parameters, the real block limit: two blocks
BIG = model_sizes("resnet56") + model_sizes("resnet20")
BATCHED = ["sign", "topk:0.01", "topk:0.3", "topk:1", "topk:0.01:rice", "topk:0.2:rice",
           "randblock:0.01", "randblock:0.3", "randblock:0.2:raw", "natural", "natural:raw",
           "randk:0.01", "randk:0.1", "randk:0.5", "randk:0.1:raw"]
EVERY_FAMILY = [*BATCHED, "identity", "dither:4",
                          "qsgd:8:b=16", "sbc:0.1", "topk:0.1+natural", "randk:0.2+qsgd:4",
                          "scaled(sign)", "scaled(topk:0.1:rice)"]


@pytest.fixture
def block_limit(monkeypatch):
    """Set the per-tensor block limit (elements per batched block) for the test."""
    def set_limit(limit: int) -> None:
        monkeypatch.setattr(blocks_module, "BATCH_MAX", limit)
    return set_limit


# ----------------------------------------------------------------------------- references
def splitmix(seed: int, index: int) -> int:
    z = (seed + PHI * (index + 1)) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def header(codec: int, numel: int, seed: int) -> bytes:
    return struct.pack("<BBHIQ", 0xC7, codec, 0, numel, seed)


def count(ratio: float, d: int) -> int:
    return min(d, max(1, math.ceil(ratio * d)))


def rice_b(p: float) -> int:
    if p >= 0.5:
        return 0
    return max(0, 1 + math.floor(math.log2(math.log((5**0.5 - 1) / 2) / math.log(1 - p))))


def rice_code(pos: np.ndarray, d: int, b: int) -> bytes:
    """Remainders (b bits each, LSB first) padded to a byte, then unary quotients (q zeros,
    a one) padded to the fixed bound k + floor((d - k) / 2^b) bits, then to a byte."""
    k = len(pos)
    gaps = np.diff(pos, prepend=-1) - 1
    rem = [(int(g) >> t) & 1 for g in gaps for t in range(b)]
    unary: list[int] = []
    for g in gaps:
        unary += [0] * (int(g) >> b) + [1]
    unary += [0] * (k + (d - k) // (1 << b) - len(unary))
    return (np.packbits(np.array(rem, dtype=np.uint8), bitorder="little").tobytes()
            + np.packbits(np.array(unary, dtype=np.uint8), bitorder="little").tobytes())


def reference_segment(spec: str, x: np.ndarray, seed: int) -> tuple[bytes, np.ndarray]:
    """(codec id + payload bytes, Q(x) as float64) of one segment, from the format."""
    name, *args = spec.split(":")
    d = x.size
    q = np.zeros(d)
    if name == "sign":
        scale = np.float32(np.abs(x.astype(np.float64)).sum() / d)
        q[:] = np.where(x < 0, -1.0, 1.0) * float(scale)
        return (scale.tobytes() + np.packbits(x < 0, bitorder="little").tobytes()), q
    if name == "topk":
        k = count(float(args[0]), d)
        pos = np.sort(np.lexsort((np.arange(d), -np.abs(x)))[:k])
        values = x[pos].astype(np.float32)
        q[pos] = values
        if "rice" in args:
            return values.tobytes() + rice_code(pos, d, rice_b(k / d)), q
        return values.tobytes() + pos.astype("<i4").tobytes(), q
    if name == "randblock":
        k = count(float(args[0]), d)
        start = int(np.random.SFC64(seed).random_raw() % np.uint64(d))
        pos = (start + np.arange(k)) % d
        values = x[pos].astype(np.float32)
        q[pos] = values * (d / k if "raw" in args else 1.0)
        return values.tobytes(), q
    if name == "randk":  # k distinct positions regenerated from the seed's raw stream
        k = count(float(args[0]), d)
        if k >= d:
            pos = np.arange(d)
        elif 32 * k > d:  # dense: the k smallest of d raw keys
            pos = np.sort(np.argsort(np.random.SFC64(seed).random_raw(d), kind="stable")[:k])
        else:  # sparse: the first k distinct values of the stream modulo d
            bitgen, seen = np.random.SFC64(seed), {}
            while len(seen) < k:
                seen.setdefault(int(bitgen.random_raw() % np.uint64(d)), None)
            pos = np.sort(np.array(list(seen), dtype=np.int64))
        values = x[pos].astype(np.float32)
        q[pos] = values * (d / k if "raw" in args else 1.0)
        return values.tobytes(), q
    if name == "natural":
        x32 = x.astype(np.float32)
        u = np.random.SFC64(seed).random_raw((d + 1) // 2).view(np.uint32)[:d] >> np.uint32(9)
        e = ((x32.view(np.uint32) & np.uint32(0x7FFFFFFF)) + u) >> np.uint32(23)
        q[:] = np.where(x32 < 0, -1.0, 1.0) * np.where(e > 0, 2.0 ** (e.astype(float) - 127), 0)
        q *= 1.0 if "raw" in args else 8 / 9
        return np.packbits(x32 < 0, bitorder="little").tobytes() + e.astype(np.uint8).tobytes(), q
    raise AssertionError(spec)


def codec_of(spec: str) -> int:
    name = spec.split(":")[0]
    return CODECS["rice"] if spec.endswith(":rice") else CODECS[name]


def reference_message(spec: str, x: np.ndarray, sizes: list[int], seed: int):
    """(message bytes, Q(x) float64) of the per-tensor message."""
    parts = [header(CODECS["per-tensor"], x.size, seed)]
    q = np.zeros(x.size)
    at = 0
    for i, d in enumerate(sizes):
        s = splitmix(seed, i)
        payload, q[at : at + d] = reference_segment(spec, x[at : at + d], s)
        parts.append(header(codec_of(spec), d, s) + payload)
        at += d
    return b"".join(parts), q


def make_input(kind: str, d: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(d, generator=gen)
    if kind == "zeros":  # many exact zeros (ReLU-like, sparse gradients)
        x[torch.rand(d, generator=gen) < 0.8] = 0
    elif kind == "ties":  # all equal magnitudes
        x = torch.where(torch.rand(d, generator=gen) < 0.5, -0.25, 0.25)
    return x


def check_against_reference(spec, sizes, x, seed, gen):
    q = PerTensor(make_compressor(spec), sizes)
    buf = q.encode(x, seed)
    expected, qx = reference_message(spec, x.numpy(), sizes, seed)
    got = buf.numpy().tobytes()
    assert len(got) == len(expected) == q.nbytes(x.numel())
    if spec == "sign":  # the fp32 scales are float sums: to 1e-5, then the rest exactly
        at = HEADER_SIZE
        mine, theirs = bytearray(got), bytearray(expected)
        for d in sizes:
            at += HEADER_SIZE
            a, b = (np.frombuffer(bytes(m[at : at + 4]), np.float32)[0] for m in (mine, theirs))
            assert a == pytest.approx(b, rel=1e-5)  # fp32 accumulation
            theirs[at : at + 4] = mine[at : at + 4]
            at += 4 + (d + 7) // 8
        expected = bytes(theirs)
    assert got == expected, (spec, seed)
    for dtype in (torch.float32, torch.float64):
        out0 = torch.randn(x.numel(), generator=gen).to(dtype)
        out = out0.clone()
        q.decode_add_(buf, out, 0.75)
        want = out0.double().numpy() + 0.75 * qx
        np.testing.assert_allclose(out.double().numpy(), want, rtol=2e-6,
                                   atol=2e-6 * (np.abs(qx).max() + 1))


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("spec", BATCHED)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_per_tensor_messages_are_the_format_rebuilt_in_numpy(block_limit, spec, layout):
    sizes, limit = LAYOUTS[layout]
    block_limit(limit)
    gen = torch.Generator().manual_seed(len(spec) * 31 + len(layout))
    for kind in ("gauss", "zeros", "ties"):
        x = make_input(kind, sum(sizes), gen)
        for seed in (0, 2**64 - 1) if kind == "gauss" else (12345,):
            check_against_reference(spec, sizes, x, seed, gen)
    for dtype in (torch.float64, torch.float16):  # converted to fp32 values as numpy does
        x = make_input("gauss", sum(sizes), gen).to(dtype)
        q = PerTensor(make_compressor(spec), sizes)
        expected, _ = reference_message(spec, x.numpy(), sizes, 5)
        if spec != "sign":
            assert q.encode(x, 5).numpy().tobytes() == expected


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["sign", "topk:0.01", "topk:0.01:rice", "randblock:0.01",
                                  "natural", "randk:0.01"])
def test_a_layout_over_a_million_parameters_is_the_format_rebuilt_in_numpy(spec):
    assert sum(BIG) > blocks_module.BATCH_MAX  # at least two blocks
    x = torch.randn(sum(BIG), generator=torch.Generator().manual_seed(7))
    check_against_reference(spec, BIG, x, 99, torch.Generator().manual_seed(8))


def per_segment(inner, x, sizes, seed, out, alpha):
    """Each segment alone, with its segment seed: (payload, and ``out`` decoded into)."""
    parts, at = [], 0
    for i, d in enumerate(sizes):
        msg = inner.encode(x[at : at + d], splitmix(seed, i))
        inner.decode_add_(msg, out[at : at + d], alpha)
        parts.append(msg)
        at += d
    return torch.cat(parts)


def check_against_each_segment(spec, layouts):
    gen = torch.Generator().manual_seed(len(spec))
    for name, sizes in layouts:
        inner = make_compressor(spec)
        q = PerTensor(inner, sizes)
        for dtype in (torch.float32, torch.float64, torch.float16):
            if name == "big" and dtype != torch.float32:
                continue  # the two blocks of the big layout: fp32 only (time)
            if spec == "identity" and dtype != torch.float32:
                continue  # per-tensor identity refuses fp16/fp64 today (its fp32 lengths)
            x = make_input("gauss", sum(sizes), gen).to(dtype)
            buf = q.encode(x, 2024)
            out, ref_out = torch.zeros_like(x), torch.zeros_like(x)
            ref = per_segment(inner, x, sizes, 2024, ref_out, 0.5)
            assert torch.equal(buf[HEADER_SIZE:], ref), (name, dtype)
            q.decode_add_(buf, out, 0.5)
            assert torch.equal(out, ref_out), (name, dtype)


@pytest.mark.parametrize("spec", EVERY_FAMILY)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_family_per_tensor_equals_each_segment_alone(block_limit, spec, layout):
    sizes, limit = LAYOUTS[layout]
    block_limit(limit)
    check_against_each_segment(spec, [(layout, sizes)])


@pytest.mark.slow
@pytest.mark.parametrize("spec", [*BATCHED, "sbc:0.1", "topk:0.1+natural"])
def test_over_a_million_parameters_per_tensor_equals_each_segment_alone(spec):
    """The batched families (and two through the shared loop) on two blocks of the real
    limit."""
    check_against_each_segment(spec, [("big", BIG)])


def test_randblock_wraps_around_each_segment():
    """Some seed makes a block wrap in every short segment; the positions agree."""
    sizes = [5, 3, 9, 2]
    q = PerTensor(make_compressor("randblock:0.6"), sizes)
    x = torch.arange(1.0, sum(sizes) + 1)
    wrapped = set()
    for seed in range(40):
        expected, qx = reference_message("randblock:0.6", x.numpy(), sizes, seed)
        assert q.encode(x, seed).numpy().tobytes() == expected
        for i, d in enumerate(sizes):
            start = int(np.random.SFC64(splitmix(seed, i)).random_raw() % np.uint64(d))
            if start + count(0.6, d) > d:
                wrapped.add(i)
        np.testing.assert_array_equal(q(x, seed).numpy(), qx)
    assert wrapped == set(range(len(sizes)))


def test_the_torch_path_agrees_with_the_host_path(monkeypatch):
    sizes = [7, 300, 1, 4096]
    x = torch.randn(sum(sizes))
    for spec in BATCHED:
        q = PerTensor(make_compressor(spec), sizes)
        host = q.encode(x, 5)
        monkeypatch.setattr(_host, "HOST_KERNELS", False)
        if not spec.startswith("natural"):  # natural's sender randomness differs by device
            assert torch.equal(q.encode(x, 5), host)
        out = torch.zeros_like(x)
        q.decode_add_(host, out, 0.5)
        monkeypatch.setattr(_host, "HOST_KERNELS", True)
        fast = torch.zeros_like(x)
        q.decode_add_(host, fast, 0.5)
        assert torch.equal(out, fast)


@pytest.mark.parametrize("spec", ["sign", "topk:0.1", "topk:0.1:rice", "randblock:0.1",
                                  "natural"])
def test_corrupt_buffers_raise(spec):
    sizes = [30, 17, 64]
    q = PerTensor(make_compressor(spec), sizes)
    x = torch.randn(sum(sizes))
    buf = q.encode(x, 1)
    bad = buf.clone()
    bad[HEADER_SIZE + 1] = 77  # first segment's codec
    with pytest.raises(CompressionError, match="codec 77"):
        q.decode_add_(bad, torch.zeros(sum(sizes)))
    with pytest.raises(CompressionError):
        q.decode_add_(buf[:-1], torch.zeros(sum(sizes)))
    if spec == "topk:0.1":  # a position out of range in the second segment
        second = HEADER_SIZE + q.inner.nbytes(30)
        k = count(0.1, 17)
        pos = second + HEADER_SIZE + 4 * k
        bad = buf.clone()
        bad[pos : pos + 4] = torch.tensor([99], dtype=torch.int32).view(torch.uint8)
        with pytest.raises(CompressionError, match="out of range"):
            q.decode_add_(bad, torch.zeros(sum(sizes)))


def test_non_finite_input_is_rejected():
    sizes = [10, 20]
    for spec in BATCHED:
        q = PerTensor(make_compressor(spec), sizes)
        x = torch.randn(30)
        x[25] = float("nan")
        with pytest.raises(CompressionError, match="finite"):
            q.encode(x)


def test_natural_overflow_is_rejected():
    q = PerTensor(make_compressor("natural"), [10, 20])
    x = torch.randn(30, dtype=torch.float64)
    x[25] = 1e39  # finite in fp64, inf in fp32: e' = 255 whatever the draw
    with pytest.raises(CompressionError, match="2\\^127"):
        q.encode(x)


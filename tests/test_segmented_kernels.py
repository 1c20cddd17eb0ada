"""The batched PerTensor kernels (sign, topk, topk:rice, randblock, natural) against a plain
per-segment loop.

The reference is written here, independently of :class:`PerTensor`: the payload is the
concatenation of ``inner.encode(x_l, segment_seed(seed, l))`` over the segments, and decoding
adds each segment's message with ``inner.decode_add_``. The batched path must give the same
bytes and bit-identical sums, for many layouts, inputs, dtypes, seeds and ``alpha``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from choco.compress import PerTensor, _host, make_compressor
from choco.compress.base import HEADER_SIZE, CompressionError
from choco.compress.segmented import segment_seed, segment_seeds
from choco.models import make_model

SPECS = ["sign", "topk:0.01", "topk:0.1", "topk:0.5", "topk:1", "topk:0.01:rice",
         "topk:0.2:rice", "randblock:0.01", "randblock:0.3", "randblock:1", "natural",
         "natural:raw"]
RESNET20 = [p.numel() for p in make_model("resnet20").parameters()]
LAYOUTS = {
    "resnet20": RESNET20,
    "ones": [1] * 19,
    "sevens": [7] * 11,
    "eights": [8] * 5,
    "nines": [9] * 6,
    "mixed": [8, 9, 1, 7, 16, 3, 300, 257, 255],
    "random": [int(s) for s in np.random.default_rng(3).integers(1, 5000, 30)],
    "single": [4099],
    "sampled": [70_000, 5, 66_000],  # topk's sampled path: coded alone
}


def reference_encode(inner, x, sizes, seed):
    parts = [inner.encode(seg, segment_seed(seed, i))
             for i, seg in enumerate(torch.split(x, sizes))]
    return torch.cat(parts)


def reference_decode_add_(inner, payload, out, sizes, alpha):
    pos = 0
    for seg, size in zip(torch.split(out, sizes), sizes, strict=True):
        n = inner.nbytes(size)
        inner.decode_add_(payload[pos : pos + n], seg, alpha)
        pos += n
    assert pos == payload.numel()


def make_input(kind, d, gen):
    x = torch.randn(d, generator=gen)
    if kind == "zeros":  # many exact zeros (ReLU-like, sparse gradients)
        x[torch.rand(d, generator=gen) < 0.8] = 0
    elif kind == "ties":  # all equal magnitudes
        x = torch.where(torch.rand(d, generator=gen) < 0.5, -0.25, 0.25)
    elif kind == "equal":
        x = torch.full((d,), 1.5)
    elif kind == "heavy":
        x = (torch.randn(d, generator=gen) ** 5 * 1e3).clamp(-6e4, 6e4)  # finite in fp16
    elif kind == "allzero":
        x = torch.zeros(d)
    return x


def count_loop_calls(monkeypatch, inner):
    calls = []
    for name in ("encode", "decode_add_"):
        original = getattr(inner, name)

        def spy(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(inner, name, spy)
    return calls


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_batched_bytes_and_sums_equal_the_loop(spec, layout):
    sizes = LAYOUTS[layout]
    d = sum(sizes)
    gen = torch.Generator().manual_seed(len(spec) * 7 + len(layout))
    inner = make_compressor(spec)
    q = PerTensor(inner, sizes)
    for kind in ["gauss", "zeros", "ties", "equal", "heavy", "allzero"]:
        x32 = make_input(kind, d, gen)
        for dtype in (torch.float32, torch.float64, torch.float16):
            x = x32.to(dtype)
            for seed in (0, 12345, 2**64 - 1) if dtype == torch.float32 else (7,):
                buf = q.encode(x, seed)
                assert buf.numel() == q.nbytes(d)
                ref = reference_encode(inner, x, sizes, seed)
                assert torch.equal(buf[HEADER_SIZE:], ref), (kind, dtype, seed)
            for alpha in (0.5, 1.0, 1 / 3):
                out = torch.randn(d, generator=gen).to(dtype)
                expected = out.clone()
                q.decode_add_(buf, out, alpha)
                reference_decode_add_(inner, ref, expected, sizes, alpha)
                assert torch.equal(out, expected), (kind, dtype, alpha)


@pytest.mark.parametrize("spec", ["sign", "topk:0.01", "topk:0.01:rice", "randblock:0.01",
                                  "natural", "natural:raw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_the_batched_path_runs_no_per_segment_loop(monkeypatch, spec, dtype):
    inner = make_compressor(spec)
    q = PerTensor(inner, RESNET20)
    x = torch.randn(sum(RESNET20)).to(dtype)
    calls = count_loop_calls(monkeypatch, inner)
    buf = q.encode(x, 3)
    q.decode_add_(buf, torch.zeros_like(x), 0.5)
    assert calls == []


def test_randblock_raw_keeps_the_loop_and_agrees():
    sizes = [7, 300, 1, 4096]
    inner = make_compressor("randblock:0.1:raw")
    q = PerTensor(inner, sizes)
    assert q._kernel is None  # each segment scales by its own d/k
    x = torch.randn(sum(sizes))
    buf = q.encode(x, 9)
    ref = reference_encode(inner, x, sizes, 9)
    assert torch.equal(buf[HEADER_SIZE:], ref)
    out, expected = torch.zeros_like(x), torch.zeros_like(x)
    q.decode_add_(buf, out, 0.5)
    reference_decode_add_(inner, ref, expected, sizes, 0.5)
    assert torch.equal(out, expected)


def test_randblock_wraps_around_each_segment():
    """Some seed makes a block wrap in every short segment; the batched positions agree."""
    sizes = [5, 3, 9, 2]
    inner = make_compressor("randblock:0.6")
    q = PerTensor(inner, sizes)
    x = torch.arange(1.0, sum(sizes) + 1)
    wrapped = set()
    for seed in range(40):
        buf = q.encode(x, seed)
        assert torch.equal(buf[HEADER_SIZE:], reference_encode(inner, x, sizes, seed))
        for i, d in enumerate(sizes):
            if _host.block_start(segment_seed(seed, i), d) + inner.k(d) > d:
                wrapped.add(i)
        out = torch.zeros_like(x)
        q.decode_add_(buf, out)
        assert torch.equal(out, q(x, seed))
    assert wrapped == set(range(len(sizes)))


def test_the_torch_path_still_loops_and_agrees(monkeypatch):
    sizes = [7, 300, 1, 4096]
    x = torch.randn(sum(sizes))
    for spec in SPECS:
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


def test_vectorized_segment_seeds_equal_the_scalar_ones():
    idx = np.arange(300)
    for seed in (0, 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15):
        expected = [segment_seed(seed, int(i)) for i in idx]
        assert [int(s) for s in segment_seeds(seed, idx)] == expected


@pytest.mark.parametrize("spec", ["sign", "topk:0.1", "topk:0.1:rice", "randblock:0.1",
                                  "natural"])
def test_corrupt_buffers_fall_back_to_the_loop_and_its_errors(spec):
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
        k = q.inner.k(17)
        pos = second + HEADER_SIZE + 4 * k
        bad = buf.clone()
        bad[pos : pos + 4] = torch.tensor([99], dtype=torch.int32).view(torch.uint8)
        out = torch.zeros(sum(sizes))
        with pytest.raises(CompressionError, match="out of range"):
            q.decode_add_(bad, out)
        # as the loop does: the first segment was added before the error
        first = torch.zeros(30)
        q.inner.decode_add_(buf[HEADER_SIZE:second], first)
        assert torch.equal(out[:30], first) and not out[30:].any()


def test_non_finite_input_is_rejected_as_by_the_loop():
    sizes = [10, 20]
    for spec in ["sign", "topk:0.1", "topk:0.1:rice", "randblock:0.1", "natural"]:
        q = PerTensor(make_compressor(spec), sizes)
        x = torch.randn(30)
        x[25] = float("nan")
        with pytest.raises(CompressionError, match="finite"):
            q.encode(x)


def test_natural_overflow_is_rejected_as_by_the_loop():
    sizes = [10, 20]
    inner = make_compressor("natural")
    q = PerTensor(inner, sizes)
    x = torch.randn(30, dtype=torch.float64)
    x[25] = 1e39  # finite in fp64, inf in fp32: e' = 255 whatever the draw
    with pytest.raises(CompressionError, match="2\\^127") as batched:
        q.encode(x)
    with pytest.raises(CompressionError) as loop:
        reference_encode(inner, x, sizes, 0)
    assert str(batched.value) == str(loop.value)

"""Compressors: registry, wire sizes, numpy references, round trips, adversarial inputs.

Statistical properties (unbiasedness, contraction, supports) are in
``test_compress_random.py``; CHOCO consensus with every compressor in
``test_compress_consensus.py``; the CLI and the benchmark in ``test_compress_cli.py``.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from choco.compress import (
    REGISTRY,
    CompressionError,
    Compressor,
    PerTensor,
    _host,
    available,
    decode,
    is_raw,
    make_compressor,
)
from choco.compress.base import HEADER_SIZE
from choco.compress.segmented import segment_seed

from .helpers import RAW_SPECS, SPECS, k_of, randn

SIZES = [1, 7, 8, 9, 100, 1001]


@pytest.fixture(params=["host", "device"])
def kernels(request, monkeypatch):
    """Run a test with the numpy CPU kernels and with the torch kernels CUDA uses."""
    monkeypatch.setattr(_host, "HOST_KERNELS", request.param == "host")
    return request.param


# ---------------------------------------------------------------------------------- registry
def test_available_lists_every_family():
    names = {spec.split(":")[0] for spec in available()}
    assert set(REGISTRY) <= names
    assert {"identity", "sign", "topk", "randk", "randblock", "natural", "dither",
            "qsgd"} <= set(REGISTRY)


@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
def test_spec_round_trips(spec):
    q = make_compressor(spec)
    assert make_compressor(q.spec).spec == q.spec
    assert make_compressor("  " + spec.upper() + " ").spec == q.spec


@pytest.mark.parametrize("spec", ["foo", "topk", "topk:0", "topk:1.5", "topk:x", "sign:1",
                                  "natural:2", "qsgd", "qsgd:0", "qsgd:4:c=3", "dither:x",
                                  "topk:0.1:raw", "sign+natural", "topk:0.1+", "scaled(sign",
                                  "", "randk:0.1+foo"])
def test_bad_specs_raise_with_a_fix(spec):
    with pytest.raises(CompressionError) as info:
        make_compressor(spec)
    message = str(info.value)
    assert "e.g." in message or "valid specs" in message or "write" in message


def test_unknown_name_lists_valid_specs():
    with pytest.raises(CompressionError, match=r"valid specs are: .*randblock:0\.01"):
        make_compressor("randblok:0.01")


def test_unbiased_forms_from_the_registry():
    assert make_compressor("natural", unbiased=True).spec == "natural:raw"
    assert make_compressor("qsgd:16", unbiased=True).spec == "qsgd:16:raw"
    assert make_compressor("randk:0.1", unbiased=True).spec == "randk:0.1:raw"
    assert make_compressor("randk:0.1+natural", unbiased=True).spec == (
        "randk:0.1:raw+natural:raw")
    assert make_compressor("identity", unbiased=True).spec == "identity"
    for spec in ["sign", "topk:0.1", "topk:0.1+natural", "scaled(natural)"]:
        with pytest.raises(CompressionError, match="biased"):
            make_compressor(spec, unbiased=True)
    q = make_compressor("natural")
    assert q.unbiased and not is_raw(q) and is_raw(q.raw())


def public_members(cls: type) -> set[str]:
    """Public names of ``cls`` (dunders and ``_protected`` ones aside): methods and
    attributes with a value, and attributes that are only annotated (``codec_id: int``)."""
    names = set(dir(cls))
    for klass in cls.__mro__:
        names |= set(inspect.get_annotations(klass))
    return {n for n in names if not n.startswith("_")}


def test_the_compressor_interface_stays_small():
    """At most 12 public members (payload size, encode, decode-add, δ/ω, raw form and the
    codec's identity): anything else is a protected hook or a module function."""
    members = public_members(Compressor)
    assert len(members) <= 12, sorted(members)
    assert {"codec_id", "spec", "encode", "decode_add_"} <= members  # the counter sees both kinds

    class Grown(Compressor):
        extra: int

        def more(self) -> None: ...

    assert public_members(Grown) == members | {"extra", "more"}  # a new member is counted


@pytest.mark.parametrize("spec", sorted(set(SPECS) | set(RAW_SPECS)))
def test_is_raw_is_the_raw_form_being_its_own(spec):
    """``is_raw(q)`` holds exactly when ``q`` is unbiased and is its own raw form."""
    for q in (make_compressor(spec), PerTensor(make_compressor(spec), [3, 5])):
        assert is_raw(q) == (q.unbiased and q.raw() is q), q
        if q.unbiased:
            r = q.raw()
            assert is_raw(r) and r.raw() is r, q


# ---------------------------------------------------------------------------------- sizes
def rice_bytes(k: int, d: int) -> int:
    """Rice-coded positions: k remainders of b bits + at most k + (d-k)/2^b unary bits."""
    p = k / d
    phi = (1 + math.sqrt(5)) / 2
    b = 0 if p >= 0.5 else max(0, 1 + math.floor(math.log2(math.log(phi - 1) / math.log(1 - p))))
    return -(-k * b // 8) + -(-(k + (d - k) // 2**b) // 8)


def expected_nbytes(spec: str, d: int) -> int:
    """Payload formulas, written out independently of the implementation."""
    bits = {"natural": lambda n: -(-n // 8) + n}
    if spec == "topk:0.1:rice":
        return 4 * k_of(0.1, d) + rice_bytes(k_of(0.1, d), d)
    if spec == "topk:0.05:rice+natural":
        k = k_of(0.05, d)
        return bits["natural"](k) + rice_bytes(k, d)
    if spec == "identity":
        return 4 * d
    if spec == "sign":
        return 4 + -(-d // 8)
    if spec == "topk:0.1":
        return 8 * k_of(0.1, d)
    if spec in ("randk:0.1", "randblock:0.1"):
        return 4 * k_of(0.1, d)
    if spec == "natural":
        return bits["natural"](d)
    if spec == "dither:4":  # sign + 3 level bits, one fp32 norm per 512-bucket
        return 4 * -(-d // 512) + -(-4 * d // 8)
    if spec == "qsgd:8":  # sign + 4 level bits
        return 4 * -(-d // 512) + -(-5 * d // 8)
    if spec == "dither:8:b=64":
        return 4 * -(-d // 64) + -(-5 * d // 8)
    if spec == "qsgd:16:b=0":
        return 4 + -(-6 * d // 8)
    if spec == "topk:0.1+natural":
        k = k_of(0.1, d)
        return bits["natural"](k) + 4 * k
    if spec == "randk:0.2+qsgd:4":
        k = k_of(0.2, d)
        return 4 * -(-k // 512) + -(-4 * k // 8)
    if spec == "randblock:0.3+dither:3":
        k = k_of(0.3, d)
        return 4 * -(-k // 512) + -(-3 * k // 8)
    if spec == "topk:0.2+sign":
        k = k_of(0.2, d)
        return 4 + -(-k // 8) + 4 * k
    if spec == "scaled(randk:0.1:raw)":
        return 4 + 4 * k_of(0.1, d)
    if spec == "scaled(qsgd:2)":
        return 4 + 4 * -(-d // 512) + -(-3 * d // 8)
    raise AssertionError(spec)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("d", [*SIZES, 4099])
def test_encoded_size_equals_the_formula(spec, d):
    q = make_compressor(spec)
    buf = q.encode(randn(d, d), seed=d)
    assert buf.dtype == torch.uint8 and buf.dim() == 1 and buf.device.type == "cpu"
    assert HEADER_SIZE <= 64
    assert buf.numel() == q.nbytes(d) == HEADER_SIZE + expected_nbytes(spec, d)


def test_identity_size_follows_the_dtype():
    q = make_compressor("identity")
    assert q.encode(randn(10, dtype=torch.float64)).numel() == HEADER_SIZE + 80
    assert q.encode(randn(10, dtype=torch.float16)).numel() == HEADER_SIZE + 20


# ---------------------------------------------------------------------------------- references
@pytest.mark.parametrize("d", [*SIZES, 70_001])
def test_sign_matches_numpy(kernels, d):
    x = randn(d, d)
    xn = x.numpy().astype(np.float64)
    expected = np.abs(xn).mean() * np.where(xn < 0, -1.0, 1.0)
    y = make_compressor("sign")(x)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.1, 0.3])
@pytest.mark.parametrize("d", [9, 1000, 70_001, 300_007])
def test_topk_matches_numpy_argsort(kernels, ratio, d):
    x = randn(d, d + int(ratio * 1000))
    k = k_of(ratio, d)
    keep = np.sort(np.argsort(-np.abs(x.numpy()), kind="stable")[:k])
    expected = np.zeros(d, dtype=np.float32)
    expected[keep] = x.numpy()[keep]
    y = make_compressor(f"topk:{ratio}")(x)
    np.testing.assert_array_equal(y.numpy(), expected)
    np.testing.assert_array_equal(make_compressor(f"topk:{ratio}:rice")(x).numpy(), expected)


def test_topk_fast_path_equals_torch_topk_on_heavy_tails(kernels):
    from choco.compress.topk import topk_indices

    rng = np.random.default_rng(5)
    for x in [rng.standard_cauchy(200_000), rng.exponential(size=200_000) ** 4,
              np.repeat(rng.standard_normal(2_000), 100)]:  # periodic, many ties
        t = torch.from_numpy(x.astype(np.float32))
        k = 2_000
        ours = topk_indices(t, k)
        ref = torch.topk(t.abs(), k).indices
        assert ours.numel() == k and bool((ours[1:] > ours[:-1]).all())
        # same set up to ties: the kept magnitudes are the same multiset
        assert torch.equal(torch.sort(t.abs()[ours]).values, torch.sort(t.abs()[ref]).values)


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
def test_decode_add_and_determinism(kernels, spec):
    d = 1001
    x = randn(d, 3)
    q = make_compressor(spec)
    buf = q.encode(x, seed=11)
    assert torch.equal(buf, q.encode(x, seed=11))  # same seed, same bytes
    receiver = make_compressor(spec)  # a separate instance regenerates shared randomness
    y = decode(receiver, buf)
    assert y.shape == (d,) and y.dtype == torch.float32
    base = randn(d, 4)
    out = base.clone()
    receiver.decode_add_(buf, out, alpha=0.25)
    torch.testing.assert_close(out, base + 0.25 * y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q(x, seed=11), y)


@pytest.mark.parametrize("spec", ["natural", "qsgd:8", "dither:4", "sign"])
def test_host_and_device_kernels_decode_each_other(monkeypatch, spec):
    x = randn(3001, 8)
    q = make_compressor(spec)
    monkeypatch.setattr(_host, "HOST_KERNELS", True)
    buf = q.encode(x, seed=2)
    host = decode(q, buf)
    monkeypatch.setattr(_host, "HOST_KERNELS", False)
    torch.testing.assert_close(decode(q, buf), host)


def test_per_tensor_compression_of_a_flat_buffer():
    sizes = [300, 5, 696]
    x = randn(sum(sizes), 9)
    for spec in ["sign", "randk:0.1", "natural", "topk:0.1+natural", "qsgd:4", "scaled(qsgd:2)",
                 "topk:0.1:rice"]:
        inner = make_compressor(spec)
        q = PerTensor(inner, sizes)
        y = q(x, seed=4)
        assert q.encode(x, 4).numel() == q.nbytes(x.numel()) == HEADER_SIZE + sum(
            inner.nbytes(s) for s in sizes)
        assert q.delta(x.numel()) == min(inner.delta(s) for s in sizes)
        parts = [inner(seg, seed=segment_seed(4, i)) for i, seg in enumerate(torch.split(x, sizes))]
        torch.testing.assert_close(y, torch.cat(parts))  # = each tensor compressed alone
        if spec == "sign":  # one scale per segment
            for seg_x, seg_y in zip(torch.split(x, sizes), torch.split(y, sizes), strict=True):
                torch.testing.assert_close(seg_y.abs(), torch.full_like(seg_y,
                                                                        float(seg_x.abs().mean())))


# ---------------------------------------------------------------------------------- adversarial
@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
@pytest.mark.parametrize("d", [1, 1000])
def test_all_zeros_decode_to_zeros(kernels, spec, d):
    y = make_compressor(spec)(torch.zeros(d), seed=1)
    assert torch.equal(y, torch.zeros(d))


@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
def test_single_element_and_odd_sizes(kernels, spec):
    q = make_compressor(spec)
    for d in [1, 3, 9, 17]:
        x = randn(d, d)
        y = q(x, seed=d)
        assert y.shape == x.shape and bool(torch.isfinite(y).all())
    if q.spec in ("identity", "topk:0.1", "randk:0.1", "randblock:0.1", "topk:0.1:rice"):
        x = torch.tensor([-2.5])
        assert torch.equal(q(x), x)  # k = 1 keeps the only entry


@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
@pytest.mark.parametrize("bad", [math.nan, -math.inf])
def test_non_finite_input_raises_a_clear_error(kernels, spec, bad):
    x = randn(1000, 1)
    x[617] = bad
    with pytest.raises(CompressionError, match="finite"):
        make_compressor(spec).encode(x)


def test_huge_finite_values_are_not_mistaken_for_nan():
    x = randn(2000, 2) * 1e30
    for spec in ["randk:0.1", "randblock:0.1", "topk:0.1", "qsgd:8"]:
        y = make_compressor(spec)(x)
        assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_float64_and_float16_inputs(kernels, spec, dtype):
    x = randn(777, 6, dtype)
    q = make_compressor(spec)
    y = q(x, seed=3)
    assert y.dtype == dtype and y.shape == x.shape
    y32 = q(x.float(), seed=3)
    if spec == "identity":
        assert torch.equal(y, x)
    else:  # fp32 on the wire: same message as for the float32 copy of x
        tol = 1e-6 if dtype == torch.float64 else 2e-3
        torch.testing.assert_close(y.float(), y32, rtol=tol, atol=tol)


def test_natural_rejects_values_beyond_float32():
    with pytest.raises(CompressionError, match="finite"):
        make_compressor("natural").encode(torch.tensor([1.0, 1e300], dtype=torch.float64))


def test_corrupt_or_mismatched_buffers_raise():
    x = randn(100)
    buf = make_compressor("natural").encode(x)
    with pytest.raises(CompressionError, match="codec"):
        decode(make_compressor("qsgd:8"), buf)
    with pytest.raises(CompressionError, match="truncated"):
        decode(make_compressor("natural"), buf[:-1])
    bad = buf.clone()
    bad[0] = 0
    with pytest.raises(CompressionError, match="magic"):
        decode(make_compressor("natural"), bad)
    with pytest.raises(CompressionError, match="same size"):
        make_compressor("natural").decode_add_(buf, torch.zeros(99))


def test_integer_and_empty_inputs_raise():
    with pytest.raises(CompressionError, match="floating-point"):
        make_compressor("natural").encode(torch.arange(10))
    with pytest.raises(CompressionError, match="numel"):
        make_compressor("natural").encode(torch.zeros(0))

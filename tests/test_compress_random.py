"""Randomised compressors: support and value form, unbiasedness, contraction over seeds.

Every check is deterministic (fixed seeds); statistical tolerances are a few standard
errors of the Monte-Carlo estimate, so a correct implementation passes with a wide margin
and a biased or over-noisy one fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from choco.compress import _host, make_compressor

from .helpers import k_of, randn


@pytest.fixture(params=["host", "device"])
def kernels(request, monkeypatch):
    monkeypatch.setattr(_host, "HOST_KERNELS", request.param == "host")
    return request.param


def samples(spec: str, x: torch.Tensor, n: int) -> torch.Tensor:
    q = make_compressor(spec)
    return torch.stack([q(x, seed=s) for s in range(n)]).double()


# ---------------------------------------------------------------------------------- forms
def is_one_wrapped_block(support: np.ndarray, d: int, k: int) -> tuple[bool, bool]:
    """(support is ``{s, s+1, …, s+k-1} mod d`` for some s, the block wraps past d-1)."""
    members = np.zeros(d, dtype=bool)
    members[support] = True
    starts = [i for i in range(d) if members[i] and not members[i - 1]]
    if len(support) != k or len(starts) != 1:
        return False, False
    return True, starts[0] + k > d


@pytest.mark.parametrize("d,ratio", [(100, 0.1), (37, 0.3), (8, 0.5), (1000, 0.013)])
def test_randblock_is_one_wrapped_block_of_k_entries(d, ratio):
    x = randn(d, 1) + 10.0  # no zeros, so the support is visible
    k = k_of(ratio, d)
    wrapped = 0
    starts = set()
    for seed in range(200):
        y = make_compressor(f"randblock:{ratio}")(x, seed=seed).numpy()
        support = np.flatnonzero(y)
        ok, wraps = is_one_wrapped_block(support, d, k)
        assert ok, (seed, support)
        np.testing.assert_array_equal(y[support], x.numpy()[support])
        wrapped += wraps
        starts.add(int(support[0]) if not wraps else None)
    assert wrapped > 0  # the wrap-around case is exercised
    assert len(starts) > min(d - k, 20)  # the start moves


def test_randk_keeps_exactly_k_distinct_entries():
    d = 500
    x = randn(d, 2) + 10.0
    hits = np.zeros(d)
    for seed in range(300):
        y = make_compressor("randk:0.05")(x, seed=seed).numpy()
        support = np.flatnonzero(y)
        assert support.size == k_of(0.05, d)
        np.testing.assert_array_equal(y[support], x.numpy()[support])
        hits[support] += 1
    assert hits.min() > 0  # every position gets picked (300 * 25 / 500 = 15 expected)


def test_randk_positions_are_uniform_for_large_k():
    from choco.compress._host import sample_positions

    for d, k in [(10, 9), (1000, 700), (1000, 1)]:
        counts = np.zeros(d)
        for seed in range(400):
            p = sample_positions(seed, d, k)
            assert p.size == k and np.unique(p).size == k and np.all(np.diff(p) > 0)
            counts[p] += 1
        expected = 400 * k / d
        assert np.abs(counts - expected).max() < 6 * math.sqrt(expected) + 1


def test_natural_outputs_are_signed_powers_of_two_around_x(kernels):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000) * np.exp(rng.uniform(-30, 30, 4000))
    x[:10] = [0.0, -0.0, 1.0, -2.0, 0.75, 2.0**-100, -(2.0**100), 3.0, 1.5, -1.5]
    x = torch.from_numpy(x.astype(np.float32))
    for seed in range(5):
        y = make_compressor("natural")(x, seed=seed).double().numpy()
        ax = np.abs(x.double().numpy())
        assert np.all(y[ax == 0] == 0)
        nz = ax > 0
        p = np.abs(y[nz]) / float(np.float32(8 / 9))  # y = ±fl32(8/9) 2^e exactly
        e = np.log2(p)
        assert np.all(e == np.round(e))
        a = np.floor(np.log2(ax[nz]))  # 2^a <= |x| < 2^(a+1): the output is one of the two
        assert np.all((p == 2.0**a) | (p == 2.0 ** (a + 1)))
        assert np.all(np.sign(y[nz]) == np.sign(x.numpy()[nz]))
        powers = np.abs(x.numpy()) == 2.0 ** np.round(np.log2(np.abs(x.numpy()) + 1e-45))
        np.testing.assert_array_equal(p[powers[nz]], ax[powers & nz])


def test_natural_subnormals_round_to_zero_or_the_smallest_normal():
    x = torch.full((20000,), 2.0**-128)  # a quarter of 2^-126
    y = make_compressor("natural:raw")(x, seed=3).double()
    assert set(y.unique().tolist()) == {0.0, 2.0**-126}
    assert abs(float(y.mean()) / 2.0**-128 - 1) < 0.03


@pytest.mark.parametrize("spec,levels", [("qsgd:8", 8), ("qsgd:3:b=16", 3)])
def test_qsgd_levels_bracket_the_scaled_magnitude(kernels, spec, levels):
    q = make_compressor(spec)
    d = 100
    x = randn(d, 4)
    size = q.bucket_size(d)
    raw = make_compressor(spec + ":raw")
    for seed in range(20):
        y = raw(x, seed=seed).double().numpy()
        assert np.allclose(q(x, seed=seed).double().numpy(), y * q.scale(d), rtol=1e-6)
        for b in range(0, d, size):
            v = x.double().numpy()[b : b + size]
            norm = np.linalg.norm(v)
            level = np.abs(y[b : b + size]) / norm * levels
            assert np.allclose(level, np.round(level), atol=1e-4)
            target = np.abs(v) / norm * levels
            assert np.all(np.floor(target) - 1e-4 <= level)
            assert np.all(level <= np.ceil(target) + 1e-4)
            nz = y[b : b + size] != 0
            assert np.all(np.sign(y[b : b + size][nz]) == np.sign(v[nz]))


def test_dither_levels_are_adjacent_powers_of_two(kernels):
    s = 4
    raw = make_compressor(f"dither:{s}:raw")
    x = randn(300, 5)
    norm = float(x.double().norm())
    t = np.abs(x.double().numpy()) / norm * 2 ** (s - 1)  # levels 0, 1, 2, 4, 8 in t units
    for seed in range(20):
        level = np.abs(raw(x, seed=seed).double().numpy()) / norm * 2 ** (s - 1)
        ok = np.zeros_like(level, dtype=bool)
        for lo, hi in [(0, 1), (1, 2), (2, 4), (4, 8)]:
            inside = (t >= lo) & (t <= hi)
            ok |= inside & (np.isclose(level, lo) | np.isclose(level, hi))
        assert ok.all()


# ---------------------------------------------------------------------------------- unbiased
UNBIASED = ["randk:0.25:raw", "randblock:0.25:raw", "natural:raw", "dither:3:raw",
            "qsgd:4:raw", "qsgd:2:b=8:raw", "randk:0.5:raw+natural:raw"]


@pytest.mark.parametrize("spec", UNBIASED)
def test_raw_forms_are_unbiased(kernels, spec):
    d, n = 48, 3000
    if kernels == "device" and spec in ("randk:0.25:raw", "randblock:0.25:raw"):
        pytest.skip("shared randomness is host-generated on every device")
    x = torch.sign(randn(d, 7)) * torch.linspace(0.3, 3, d)  # no near-zero entries
    ys = samples(spec, x, n)
    mean, std = ys.mean(0), ys.std(0)
    tol = 5 * std / math.sqrt(n) + 1e-7
    assert bool(((mean - x.double()).abs() <= tol).all()), (mean - x.double()).abs().max()
    assert make_compressor(spec).unbiased


def test_scaled_forms_are_the_raw_forms_times_one_over_one_plus_omega():
    x = randn(600, 3)
    for spec in ["randk:0.1", "randblock:0.1", "natural", "dither:5", "qsgd:8"]:
        q, raw = make_compressor(spec), make_compressor(spec + ":raw")
        d = x.numel()
        factor = 1 / (1 + raw.omega(d))
        torch.testing.assert_close(q(x, seed=9), raw(x, seed=9) * factor, rtol=1e-5, atol=1e-7)
        assert math.isclose(q.delta(d), factor)
        assert math.isclose(raw.delta(d), 1 - raw.omega(d))


# ---------------------------------------------------------------------------------- contraction
CONTRACTIVE = ["sign", "topk:0.1", "randk:0.1", "randblock:0.1", "natural", "dither:2",
               "dither:6", "qsgd:2", "qsgd:16", "qsgd:4:b=16", "topk:0.25+natural",
               "randk:0.3+qsgd:4", "randblock:0.2+dither:3", "scaled(randk:0.1:raw)",
               "scaled(qsgd:2:raw)", "natural:raw"]


def probe_vectors(d: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(d)
    worst = (4 / 3) * 2.0 ** rng.integers(-5, 5, d) * rng.choice([-1, 1], d)  # C_nat's worst
    spike = np.zeros(d)
    spike[d // 3] = 5.0
    return {
        "gaussian": rng.standard_normal(d), "cauchy": rng.standard_cauchy(d),
        "constant": np.ones(d), "natural-worst": worst, "spike": spike + 1e-3,
    }


@pytest.mark.parametrize("spec", CONTRACTIVE)
def test_contraction_holds_in_expectation(kernels, spec):
    d, n = 256, 150
    q = make_compressor(spec)
    delta = q.delta(d)
    assert 0 < delta <= 1
    for name, x in probe_vectors(d).items():
        x = torch.from_numpy(x.astype(np.float32))
        err = ((samples(spec, x, n) - x.double()) ** 2).sum(1) / float(x.double().norm() ** 2)
        sem = float(err.std()) / math.sqrt(n)
        assert float(err.mean()) <= (1 - delta) + 4 * sem + 1e-6, (name, float(err.mean()))


def test_natural_attains_its_documented_delta():
    """At |x_i| = (4/3) 2^a the variance bound ω = 1/8 is attained: δ = 8/9 is tight."""
    x = torch.from_numpy(probe_vectors(512)["natural-worst"].astype(np.float32))
    for spec, delta in [("natural", 8 / 9), ("natural:raw", 7 / 8)]:
        err = ((samples(spec, x, 400) - x.double()) ** 2).sum(1) / float(x.double().norm() ** 2)
        assert abs(float(err.mean()) - (1 - delta)) < 0.004
        assert make_compressor(spec).delta(512) == pytest.approx(delta)

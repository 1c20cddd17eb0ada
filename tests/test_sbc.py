"""``sbc:R`` (Sparse Binary Compression) against an independent numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from choco.compress import PerTensor
from choco.compress.sbc import SBC
from choco.wire import rice_parameter


def reference(x: np.ndarray, ratio: float) -> np.ndarray:
    """μ·1_S, S = the k largest positive or the k most negative entries, whichever side's
    mean is larger in magnitude (positive on a tie); zeros complete a short side."""
    d = x.size
    k = max(1, math.ceil(ratio * d))
    out = np.zeros(d)
    best = None
    for sign in (1.0, -1.0):
        v = np.maximum(sign * x, 0.0)
        order = np.lexsort((np.arange(d), -v))[:k]  # ties: lowest positions
        mu = x[order].sum() / k
        if best is None or abs(mu) > abs(best[0]):
            best = (mu, order)
    out[best[1]] = best[0]
    return out


CASES = {
    "gaussian": lambda g: g.standard_normal(5000),
    "shifted up": lambda g: g.standard_normal(5000) + 0.5,
    "mostly negative": lambda g: -np.abs(g.standard_normal(5000)),
    "all positive, few": lambda g: np.abs(g.standard_normal(50)),
    "sparse": lambda g: np.where(g.random(20000) < 0.002, g.standard_normal(20000), 0.0),
}


@pytest.mark.parametrize("ratio", [0.01, 0.1])
@pytest.mark.parametrize("case", list(CASES))
def test_sbc_matches_the_reference_and_contracts_exactly(case, ratio):
    x = CASES[case](np.random.default_rng(1))
    q = SBC(ratio)
    y = q(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, reference(x, ratio), rtol=1e-6, atol=1e-7)
    k = q.k(x.size)
    mu = y[y != 0][0] if np.any(y) else 0.0
    # μ is the least-squares scale of 1_S: ||Q(x) − x||² = ||x||² − k μ²
    np.testing.assert_allclose(((y - x) ** 2).sum(), (x**2).sum() - k * mu**2, rtol=1e-5)
    assert 1 - ((y - x) ** 2).sum() / (x**2).sum() >= q.delta(x.size) - 1e-12


def test_wire_size_and_bits_per_position():
    d, p = 2**20, 0.01
    q = SBC(p)
    k = q.k(d)
    x = torch.randn(d, generator=torch.Generator().manual_seed(0))
    buf = q.encode(x)
    b = rice_parameter(p)
    assert b == 6  # SBC's b* at p = 1%
    assert buf.numel() == q.nbytes(d) == 16 + 4 + (k * b + 7) // 8 + (k + (d - k) // 2**b + 7) // 8
    expected_bits = b + 1 / (1 - (1 - p) ** (2**b))  # the Golomb code's mean length
    assert expected_bits == pytest.approx(8.108, abs=1e-3)
    fixed = 8 * (buf.numel() - 20) / k  # the fixed-size buffer's bound: about 5% more
    assert expected_bits < fixed < 1.06 * expected_bits
    assert 32 * d / (8 * buf.numel()) > 350  # ~370x fewer bits than dense fp32


def test_zero_vector_and_per_tensor_segments():
    q = SBC(0.05)
    assert torch.equal(q(torch.zeros(100)), torch.zeros(100))
    x = torch.cat([torch.full((40,), 3.0), -torch.full((60,), 1.0)])
    per = PerTensor(q, [40, 60])
    y = per(x).numpy()
    np.testing.assert_allclose(y[:40][y[:40] != 0], 3.0)  # each tensor its own side and μ
    np.testing.assert_allclose(y[40:][y[40:] != 0], -1.0)
    assert (y[:40] != 0).sum() == 2 and (y[40:] != 0).sum() == 3


@pytest.mark.parametrize("d,ratio", [(4999, 0.01), (37, 0.10), (1234, 0.05)])
def test_k_is_the_ceiling_of_r_d_when_r_d_is_not_whole(d, ratio):
    """``k(d) = ⌈R d⌉`` (R d = 49.99, 3.7, 61.7 here): Q(x) has exactly k non-zeros, and the
    message is 16 + 4 bytes plus the Rice bound of k positions with ``b*`` for ``p = R``."""
    k = math.ceil(ratio * d)
    assert k != ratio * d
    x = torch.from_numpy(np.random.default_rng(d).standard_normal(d))  # no zeros, no ties
    q = SBC(ratio)
    y = q(x).numpy()
    assert np.count_nonzero(y) == k
    np.testing.assert_allclose(y, reference(x.numpy(), ratio), rtol=1e-6, atol=1e-7)
    b = 0 if ratio >= 0.5 else 1 + math.floor(math.log2(math.log((5**0.5 - 1) / 2)
                                                        / math.log(1 - ratio)))
    assert q.encode(x).numel() == 16 + 4 + (k * b + 7) // 8 + (k + (d - k) // 2**b + 7) // 8
    per = PerTensor(q, [d, 10])  # per tensor: k of each segment from its own size
    y = per(torch.cat([x, x[:10]])).numpy()
    assert np.count_nonzero(y[:d]) == k and np.count_nonzero(y[d:]) == math.ceil(ratio * 10)

"""Gradient tracking (gt), BEER and quasi-global momentum on problems solved by hand.

The decentralized quadratic: node i holds f_i(x) = ½‖A_i x − b_i‖² with its own optimum; the
global optimum x* = (Σ A_iᵀA_i)⁻¹ Σ A_iᵀ b_i is computed with numpy. With a constant step,
D-PSGD stops at the fixed point of X = W X − η ∇F(X) (solved as one linear system), which is
not x*; gradient tracking and BEER (any compressor) reach x* itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from choco.baselines import ExactGossip
from choco.comm import LocalNetwork
from choco.compress import make_compressor
from choco.optim import ChocoSGD
from choco.tracking import BEERTracking, ExactTracking, TrackingSGD
from topologies import parse_topology

N, D, ROWS = 5, 4, 6
ETA = 0.05


def problem(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    # A_i = Q_i diag(s_i) with orthonormal columns Q_i and singular values in [1, 1.5]:
    # every f_i is 1-strongly convex and 2.25-smooth, so a few hundred steps converge
    A = [np.linalg.qr(rng.normal(size=(ROWS, D)))[0] * rng.uniform(1, 1.5, size=D)
         for _ in range(N)]
    b = [rng.normal(size=ROWS) + 3.0 * i for i in range(N)]  # very different local optima
    return A, b


def global_optimum(A, b) -> np.ndarray:
    return np.linalg.solve(sum(a.T @ a for a in A), sum(a.T @ y for a, y in zip(A, b, strict=True)))


def dpsgd_fixed_point(A, b, W, eta) -> np.ndarray:
    """X with (I − W) X + η [A_iᵀ A_i x_i]_i = η [A_iᵀ b_i]_i, rows x_i (n × d)."""
    n = len(A)
    M = np.kron(np.eye(n) - W, np.eye(D))
    for i, a in enumerate(A):
        M[i * D:(i + 1) * D, i * D:(i + 1) * D] += eta * a.T @ a
    rhs = eta * np.concatenate([a.T @ y for a, y in zip(A, b, strict=True)])
    return np.linalg.solve(M, rhs).reshape(n, D)


class Quadratic(torch.nn.Module):
    def __init__(self, A: np.ndarray, b: np.ndarray, x0: np.ndarray) -> None:
        super().__init__()
        self.A, self.b = torch.from_numpy(A), torch.from_numpy(b)
        self.x = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))

    def loss(self) -> torch.Tensor:
        r = self.A @ self.x - self.b
        return 0.5 * (r * r).sum()


def run(kind: str, steps: int, A, b, *, spec: str = "identity", gamma: float = 1.0,
        eta: float = ETA, momentum: float = 0.0, nesterov: bool = False,
        momentum_mode: str = "local", topology: str = f"ring:{N}", x0=None,
        ) -> tuple[np.ndarray, list[int]]:
    """Every node's final x (rows) and bytes sent, for ``kind`` in dpsgd, gt, beer."""
    topo = parse_topology(topology, "metropolis")
    net = LocalNetwork([topo.neighbors(i) for i in range(topo.n)])
    start = np.zeros(D) if x0 is None else x0

    def node(comm):
        model = Quadratic(A[comm.rank], b[comm.rank], start)
        sgd = torch.optim.SGD(model.parameters(), lr=eta, momentum=momentum,
                              nesterov=nesterov)
        row = topo.W[comm.rank]
        if kind == "dpsgd":
            opt = ChocoSGD(sgd, ExactGossip(comm, row), momentum_mode=momentum_mode)
        elif kind == "gt":
            opt = TrackingSGD(sgd, ExactTracking(comm, row), momentum_mode=momentum_mode)
        else:
            mixer = BEERTracking(comm, row, make_compressor(spec), gamma, seed=11)
            opt = TrackingSGD(sgd, mixer, momentum_mode=momentum_mode)
        for _ in range(steps):
            opt.zero_grad()
            model.loss().backward()
            opt.step()
        opt.flush()
        return model.x.detach().numpy().copy(), opt.bytes_sent

    out = net.run(node)
    return np.stack([x for x, _ in out]), [nb for _, nb in out]


def test_gradient_tracking_reaches_the_optimum_where_dpsgd_stalls_at_its_bias():
    A, b = problem()
    W = parse_topology(f"ring:{N}", "metropolis").W
    x_star = global_optimum(A, b)
    fixed = dpsgd_fixed_point(A, b, W, ETA)
    bias = np.abs(fixed - x_star).max()
    assert bias > 1e-2  # the computed D-PSGD limit is far from x* (≫ the tolerance below)

    dpsgd, _ = run("dpsgd", 300, A, b)
    # the run ends with flush(): the round in flight at the fixed point adds W X − X
    np.testing.assert_allclose(dpsgd, W @ fixed, rtol=0, atol=1e-8)
    gt, _ = run("gt", 300, A, b)
    np.testing.assert_allclose(gt, np.tile(x_star, (N, 1)), rtol=0, atol=1e-8)


def test_beer_with_identity_and_gamma_one_is_gradient_tracking():
    A, b = problem(1)
    gt, gt_bytes = run("gt", 20, A, b)
    beer, beer_bytes = run("beer", 20, A, b, spec="identity", gamma=1.0)
    np.testing.assert_allclose(beer, gt, rtol=0, atol=1e-12)
    assert np.abs(gt - gt[0]).max() > 1e-6  # not yet at consensus: the check sees the mixing
    # two full float64 messages per step to each of 2 neighbours, on both methods
    per_step = 2 * make_compressor("identity").nbytes(D, torch.float64) * 2
    assert gt_bytes == beer_bytes == [20 * per_step] * N


@pytest.mark.parametrize("spec", ["sign", "topk:0.5"])
def test_beer_with_compression_converges_to_the_optimum(spec):
    A, b = problem(2)
    x_star = global_optimum(A, b)
    steps = 400
    beer, sent = run("beer", steps, A, b, spec=spec, gamma=0.4)
    np.testing.assert_allclose(beer, np.tile(x_star, (N, 1)), rtol=0, atol=1e-8)
    comp = make_compressor(spec)
    assert sent == [steps * 2 * comp.nbytes(D) * 2] * N  # both channels, both neighbours


def qgm_by_hand(g, x0, eta, beta, steps, nesterov):
    """QG-DSGDm (arXiv:2102.04761, Alg. 1) for two nodes with constant gradients g[i] and
    exact averaging W = ½ 11ᵀ, written out with plain floats."""
    x = [x0, x0]
    m_hat = [0.0, 0.0]
    for _ in range(steps):
        half = []
        for i in range(2):
            m = beta * m_hat[i] + g[i]
            direction = g[i] + beta * m if nesterov else m
            half.append(x[i] - eta * direction)
        mean = (half[0] + half[1]) / 2
        for i in range(2):
            d = (x[i] - mean) / eta
            m_hat[i] = beta * m_hat[i] + (1 - beta) * d
        x = [mean, mean]
    return x


class Linear1(torch.nn.Module):
    """f(x) = c·x: a constant gradient c."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c
        self.x = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def loss(self) -> torch.Tensor:
        return (self.c * self.x).sum()


def qgm_library(g, eta, beta, steps, nesterov, kind="exact"):
    topo = parse_topology("complete:2", "metropolis")  # W = ½ 11ᵀ
    net = LocalNetwork([topo.neighbors(i) for i in range(2)])

    def node(comm):
        model = Linear1(g[comm.rank])
        sgd = torch.optim.SGD(model.parameters(), lr=eta, momentum=beta, nesterov=nesterov)
        row = topo.W[comm.rank]
        if kind == "exact":
            opt = ChocoSGD(sgd, ExactGossip(comm, row), order="sync",
                           momentum_mode="quasi-global")
        else:  # BEER with identity, γ = 1: gradient tracking; constant gradients: y = g
            opt = TrackingSGD(sgd, BEERTracking(comm, row, make_compressor("identity"), 1.0),
                              momentum_mode="quasi-global")
        for _ in range(steps):
            opt.zero_grad()
            model.loss().backward()
            opt.step()
        return float(model.x.detach())

    return net.run(node)


def test_quasi_global_momentum_two_nodes_by_hand():
    # node 0 has gradient 1, node 1 gradient 3; η = 0.1, β = 0.5, heavy ball, x⁰ = 0.
    # step 1: m̂ = 0, half-steps −0.1 and −0.3, average −0.2; d = 0.2/0.1 = 2 on both nodes,
    #         m̂ = 0.5·0 + 0.5·2 = 1.
    # step 2: m = 0.5·1 + g = 1.5 and 3.5; half-steps −0.35 and −0.55, average −0.45;
    #         d = 0.25/0.1 = 2.5, m̂ = 0.5·1 + 0.5·2.5 = 1.75.
    # step 3: m = 1.875 and 3.875; average step 0.1·2.875: x = −0.7375.
    xs = qgm_library([1.0, 3.0], 0.1, 0.5, 3, nesterov=False)
    assert xs == pytest.approx([-0.7375, -0.7375], abs=1e-14)
    for nesterov in (False, True):
        expected = qgm_by_hand([1.0, 3.0], 0.0, 0.1, 0.5, 12, nesterov)
        assert qgm_library([1.0, 3.0], 0.1, 0.5, 12, nesterov) == pytest.approx(expected,
                                                                                abs=1e-12)


def gt_qgm_by_hand(g, eta, beta, steps, nesterov):
    """Gradient tracking (W = ½ 11ᵀ) with quasi-global momentum, constant gradients g[i]:
    y_i⁰ = g_i, y_i⁺ = mean(y) + g_i − g_i; x_i⁺ = mean(x) − η dir(y_i, m̂_i);
    m̂_i ← β m̂_i + (1 − β)(x_i − x_i⁺)/η."""
    x, y, m_hat = [0.0, 0.0], list(g), [0.0, 0.0]
    for _ in range(steps):
        mean_x, mean_y = sum(x) / 2, sum(y) / 2
        new = []
        for i in range(2):
            m = beta * m_hat[i] + y[i]
            direction = y[i] + beta * m if nesterov else m
            new.append(mean_x - eta * direction)
            m_hat[i] = beta * m_hat[i] + (1 - beta) * (x[i] - new[i]) / eta
        x, y = new, [mean_y, mean_y]
    return x


@pytest.mark.parametrize("nesterov", [False, True])
def test_quasi_global_momentum_with_beer_acts_on_the_tracker(nesterov):
    expected = gt_qgm_by_hand([1.0, 3.0], 0.1, 0.5, 8, nesterov)
    xs = qgm_library([1.0, 3.0], 0.1, 0.5, 8, nesterov, kind="beer")
    assert xs == pytest.approx(expected, abs=1e-12)

"""The algorithm pinned by whole-network formulas computed independently in numpy.

Each test states the expected trajectory of the whole network in matrix form (X is the
``n × d`` stack of the nodes' vectors, W the mixing matrix) and recomputes it without the
package's update code, so that a refactor of the per-node code cannot change the
algorithm silently:

* CHOCO-Gossip with γ < 1: identity gives ``X⁺ = X + γ (W − I) X``; with a lossy Q the
  reference tracks ``X̂`` for the whole network (``Q`` computed in numpy for top-k and sign);
* ChocoSGD's two orders through a real optimizer: ``overlap`` gives ``X⁺ = W X − η D(X)``
  after the first step, ``sync`` gives ``X⁺ = W (X − η D(X))``;
* sign(0) = +;
* the ``--json`` summary of ``choco-train`` names the compressor the run actually used.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from choco.comm.local import LocalNetwork
from choco.compress import make_compressor
from choco.gossip import ChocoGossip
from choco.optim import ChocoSGD
from choco.train import main as train_main
from topologies import parse_topology


def network(spec: str, compressor: str, gamma: float, seed: int = 0):
    topo = parse_topology(spec, "metropolis")
    net = LocalNetwork.from_matrix(topo.W)
    gossips = [ChocoGossip(c, topo.row(c.rank), make_compressor(compressor), gamma, seed)
               for c in net.comms]
    return np.asarray(topo.W, dtype=np.float64), gossips


def lock_step_round(gossips, xs) -> None:
    for g, x in zip(gossips, xs, strict=True):
        g.begin(x)
    for g, x in zip(gossips, xs, strict=True):
        g.finish(x)


def start(n: int, d: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.standard_normal(d)) for _ in range(n)]


def stack(xs) -> np.ndarray:
    return torch.stack(list(xs)).numpy().copy()


# ------------------------------------------------------------------ 1a: identity, γ < 1
@pytest.mark.parametrize("gamma", [0.3, 0.7])
@pytest.mark.parametrize("spec", ["ring:6", "torus:3x3"])
def test_identity_gamma_below_one_is_damped_gossip(spec, gamma):
    """Q = identity: x̂ after a round is x before it and s = W x̂, so X⁺ = X + γ (W − I) X."""
    W, gossips = network(spec, "identity", gamma)
    n = W.shape[0]
    assert np.allclose(W, W.T) and np.allclose(W.sum(1), 1.0)
    xs = start(n, 40, seed=1)
    X = stack(xs)
    step = np.eye(n) + gamma * (W - np.eye(n))
    worst = 0.0
    for _ in range(20):
        X_before = X
        lock_step_round(gossips, xs)
        X = step @ X_before
        worst = max(worst, float(np.abs(stack(xs) - X).max()))
        # the public copies are the vectors before the round, s their W-average
        assert np.abs(stack(g.state.x_hat for g in gossips) - X_before).max() < 1e-12
        assert np.abs(stack(g.state.s for g in gossips) - W @ X_before).max() < 1e-12
    assert worst < 1e-12
    # not a fixed point already: the rounds moved the vectors by much more than the tolerance
    assert np.abs(X - stack(start(n, 40, seed=1))).max() > 1e-2


# ------------------------------------------------------------------ 1b: lossy Q, γ < 1
def q_topk(v: np.ndarray, ratio: float) -> np.ndarray:
    """Top-k in numpy: the k = max(1, ceil(R d)) largest |v_i|, values sent as fp32."""
    d = v.size
    k = min(d, max(1, math.ceil(ratio * d)))
    keep = np.argsort(-np.abs(v), kind="stable")[:k]
    out = np.zeros_like(v)
    out[keep] = v[keep].astype(np.float32).astype(np.float64)
    return out


def q_sign(v: np.ndarray) -> np.ndarray:
    """(||v||_1 / d) sign(v) in numpy, sign(0) = +, the scale sent as fp32."""
    scale = np.float64(np.float32(np.abs(v).sum() / v.size))
    return np.where(v < 0, -scale, scale)


REFERENCE_Q = {"topk:0.1": lambda v: q_topk(v, 0.1), "sign": q_sign}


@pytest.mark.parametrize("spec", ["ring:6", "torus:3x3"])
@pytest.mark.parametrize("compressor", ["topk:0.1", "sign"])
def test_lossy_choco_gossip_matches_whole_network_reference(spec, compressor):
    """Q lossy, γ = 0.4: Q = Q(X − X̂) row by row, X̂ += Q, X += γ (W X̂ − X̂)."""
    gamma, d = 0.4, 50
    W, gossips = network(spec, compressor, gamma, seed=3)
    n = W.shape[0]
    Q = REFERENCE_Q[compressor]
    xs = start(n, d, seed=2)
    X, X_hat = stack(xs), np.zeros((n, d))
    worst = {"x": 0.0, "x_hat": 0.0, "s": 0.0}
    for _ in range(15):
        D = np.stack([Q(X[i] - X_hat[i]) for i in range(n)])
        X_hat = X_hat + D
        X = X + gamma * (W @ X_hat - X_hat)
        lock_step_round(gossips, xs)
        worst["x"] = max(worst["x"], float(np.abs(stack(xs) - X).max()))
        worst["x_hat"] = max(worst["x_hat"], float(np.abs(
            stack(g.state.x_hat for g in gossips) - X_hat).max()))
        worst["s"] = max(worst["s"], float(np.abs(
            stack(g.state.s for g in gossips) - W @ X_hat).max()))
    assert max(worst.values()) < 1e-12, worst
    # lossy: the public copies lag behind the vectors, so the comparison is not vacuous
    assert np.abs(X - X_hat).max() > 1e-3


def test_sign_reference_matches_the_documented_operator():
    """The numpy reference above is the documented Q (so 1b compares like with like)."""
    v = np.random.default_rng(4).standard_normal(37)
    q = make_compressor("sign")(torch.from_numpy(v), 0).numpy()
    np.testing.assert_array_equal(q, q_sign(v))
    q = make_compressor("topk:0.1")(torch.from_numpy(v), 0).numpy()
    np.testing.assert_array_equal(q, q_topk(v, 0.1))


# ------------------------------------------------------------------ 4: sign(0) = +
@pytest.fixture(params=["host", "device"])
def kernels(request, monkeypatch):
    """The numpy CPU kernels, and the torch kernels CUDA runs (as tests/test_compress.py)."""
    from choco.compress import _host

    monkeypatch.setattr(_host, "HOST_KERNELS", request.param == "host")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sign_of_zero_decodes_to_plus_scale(dtype, kernels):
    """docs/compressors.md: sign is (‖x‖₁/d)·sign(x) with sign(0) = +."""
    x = torch.tensor([0.0, -2.0, 0.0, 3.0], dtype=dtype)
    scale = (0.0 + 2.0 + 0.0 + 3.0) / 4  # 1.25, exact in fp32
    expected = torch.tensor([scale, -scale, scale, scale], dtype=dtype)
    q = make_compressor("sign")
    assert torch.equal(q(x, 0), expected)
    out = torch.zeros(4, dtype=dtype)
    q.decode_add_(q.encode(x, 0), out, alpha=2.0)
    assert torch.equal(out, 2 * expected)
    # a longer vector crossing a byte boundary of the packed signs, zeros at every offset
    y = torch.zeros(19, dtype=dtype)
    y[1::3] = -1.0
    y[2::3] = 0.5
    scale = float(y.abs().sum()) / 19
    got = q(y, 0)
    want = torch.where(y < 0, -1.0, 1.0).to(dtype) * torch.tensor(scale, dtype=torch.float32)
    assert torch.equal(got, want.to(dtype))


# ------------------------------------------------------------------ 2: ChocoSGD orders
N_NODES, DIM, ROWS, LR, STEPS = 4, 5, 7, 0.05, 6


def quadratic(rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Node i's data: f_i(w) = ½ ‖A_i w − b_i‖², gradient A_iᵀ (A_i w − b_i)."""
    rng = np.random.default_rng(100 + rank)
    return rng.standard_normal((ROWS, DIM)), rng.standard_normal(ROWS)


def initial(rank: int) -> np.ndarray:
    return np.random.default_rng(200 + rank).standard_normal(DIM)


def grads(X: np.ndarray) -> np.ndarray:
    """D(X): row i is ∇f_i(x_i)."""
    rows = []
    for i, x in enumerate(X):
        A, b = quadratic(i)
        rows.append(A.T @ (A @ x - b))
    return np.stack(rows)


def run_choco_sgd(order: str) -> np.ndarray:
    """ChocoSGD over torch.optim.SGD on 4 threads; returns X after each step (steps+1, n, d)."""
    topo = parse_topology(f"ring:{N_NODES}", "metropolis")
    net = LocalNetwork.from_matrix(topo.W)

    def node(comm) -> list[np.ndarray]:
        model = torch.nn.Linear(DIM, 1, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(initial(comm.rank)).view(1, DIM))
        gossip = ChocoGossip(comm, topo.row(comm.rank), make_compressor("identity"), 1.0)
        opt = ChocoSGD(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0), gossip,
                       order=order)
        A, b = (torch.from_numpy(t) for t in quadratic(comm.rank))
        trace = [model.weight.detach().view(-1).numpy().copy()]
        for _ in range(STEPS):
            opt.zero_grad()
            (0.5 * ((model(A).view(-1) - b) ** 2).sum()).backward()
            opt.step()
            trace.append(model.weight.detach().view(-1).numpy().copy())
        opt.flush()
        return trace

    traces = net.run(node)
    return np.stack([np.stack(t) for t in traces], axis=1)


def test_choco_sgd_overlap_and_sync_orders_follow_their_formulas():
    """Identity, γ = 1 (optim.py): overlap is D-PSGD X⁺ = W X − η D(X) from the second step
    on (the first step is local only: nothing was in flight), sync is X⁺ = W (X − η D(X))."""
    W = np.asarray(parse_topology(f"ring:{N_NODES}", "metropolis").W, dtype=np.float64)
    X0 = np.stack([initial(i) for i in range(N_NODES)])
    overlap, sync = run_choco_sgd("overlap"), run_choco_sgd("sync")
    assert np.array_equal(overlap[0], X0) and np.array_equal(sync[0], X0)

    ref_overlap = [X0, X0 - LR * grads(X0)]
    ref_sync = [X0]
    for _ in range(STEPS - 1):
        X = ref_overlap[-1]
        ref_overlap.append(W @ X - LR * grads(X))
    for _ in range(STEPS):
        X = ref_sync[-1]
        ref_sync.append(W @ (X - LR * grads(X)))
    assert np.abs(overlap - np.stack(ref_overlap)).max() < 1e-12
    assert np.abs(sync - np.stack(ref_sync)).max() < 1e-12
    # the two orders are different algorithms on this problem
    assert np.abs(overlap[1:] - sync[1:]).max(axis=(1, 2)).min() > 1e-3


# ------------------------------------------------------------------ 7: --json summary
JSON_RUN = ["--topology", "ring:4", "--nodes", "4", "--epochs", "1", "--quiet", "--json",
            "--eval-local", "false", "--compressor", "qsgd:8"]


def json_summary(capsys, tmp_path, algorithm: str) -> dict:
    """The last stdout line of a 1-epoch run (RuntimeError if the run itself failed)."""
    code = train_main([*JSON_RUN, "--algorithm", algorithm, "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().out.strip().splitlines()
    if code != 0 or not lines:
        raise RuntimeError(f"choco-train --algorithm {algorithm} failed with exit {code}")
    summary = json.loads(lines[-1])
    if summary.get("algorithm") != algorithm or summary.get("epoch") != 1:
        raise RuntimeError(f"unexpected summary {summary}")
    return summary


# exact, allreduce and local send uncompressed vectors or nothing: --compressor is ignored
@pytest.mark.parametrize("algorithm", ["exact", "allreduce", "local"])
def test_json_reports_no_compressor_for_uncompressed_algorithms(capsys, tmp_path, algorithm):
    summary = json_summary(capsys, tmp_path, algorithm)
    assert summary["compressor"] is None


@pytest.mark.parametrize("algorithm", ["choco", "dcd", "ecd"])
def test_json_reports_the_compressor_of_compressed_algorithms(capsys, tmp_path, algorithm):
    assert json_summary(capsys, tmp_path, algorithm)["compressor"] == "qsgd:8"

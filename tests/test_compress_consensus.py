"""Every compressor drives CHOCO-Gossip average consensus on ``ring:8`` (arXiv:1902.00340).

In-process network in lock-step (begin on all nodes, then finish on all), ``d = 128``,
``X0 ~ N(0, 1)`` with seed 0. For each compressor the table fixes the consensus step ``γ``
(tuned on this problem over {1, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05}) and a step budget of about
twice the steps it needs for the consensus error ``Σ_i ||x_i - x̄⁰||²`` to fall by 10³; the
network mean must stay at ``x̄⁰`` (W is doubly stochastic) to float32 precision.

=========================  =====  =====  ==========================================
spec                       γ      steps  note
=========================  =====  =====  ==========================================
identity                   1.0    30     exact gossip x ← W x (13 steps)
sign                       0.5    150    66 steps
topk:0.1                   0.2    150    67; γ >= 0.5 diverges
randk:0.1                  0.1    400    198; γ >= 0.2 diverges (δ = 0.1)
randblock:0.1              0.1    400    197
natural                    0.5    60     28
dither:4                   0.5    60     25
qsgd:4                     0.5    80     36
topk:0.25+natural          0.5    60     27
randk:0.25+qsgd:8          0.2    150    73
randblock:0.25+dither:4    0.2    150    73
scaled(randk:0.1:raw)      0.1    400    198
scaled(qsgd:2)             0.2    150    74
per-tensor sign 64/32/32   0.5    150
=========================  =====  =====  ==========================================
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from choco.comm import LocalNetwork
from choco.compress import Compressor, PerTensor, make_compressor
from choco.gossip import ChocoGossip, lockstep
from topologies import parse_topology

CASES = [
    ("identity", 1.0, 30), ("sign", 0.5, 150), ("topk:0.1", 0.2, 150),
    ("randk:0.1", 0.1, 400), ("randblock:0.1", 0.1, 400), ("natural", 0.5, 60),
    ("dither:4", 0.5, 60), ("qsgd:4", 0.5, 80), ("topk:0.25+natural", 0.5, 60),
    ("randk:0.25+qsgd:8", 0.2, 150), ("randblock:0.25+dither:4", 0.2, 150),
    ("scaled(randk:0.1:raw)", 0.1, 400), ("scaled(qsgd:2)", 0.2, 150),
]
D = 128


def consensus(make: callable, gamma: float, steps: int, seed: int = 0) -> tuple[list, int]:
    """Run until the error falls by 1e3 or ``steps``; return (errors, steps used)."""
    W = parse_topology("ring:8").W
    net = LocalNetwork.from_matrix(W)
    X0 = np.random.default_rng(seed).standard_normal((8, D)).astype(np.float32)
    xs = [torch.from_numpy(X0[i].copy()) for i in range(8)]
    mean0 = torch.from_numpy(X0).double().mean(0)
    nodes = [ChocoGossip(net.comms[i], W[i], make(), gamma, seed=seed) for i in range(8)]
    errors = [float(((torch.from_numpy(X0).double() - mean0) ** 2).sum())]
    for t in range(1, steps + 1):
        lockstep(nodes, xs)
        X = torch.stack(xs).double()
        # W doubly stochastic: the consensus step leaves the network mean unchanged
        torch.testing.assert_close(X.mean(0), mean0, rtol=0, atol=2e-5)
        errors.append(float(((X - mean0) ** 2).sum()))
        if errors[-1] <= 1e-3 * errors[0]:
            return errors, t
    return errors, steps


@pytest.mark.parametrize("spec,gamma,steps", CASES)
def test_choco_consensus_converges(spec, gamma, steps):
    errors, used = consensus(lambda: make_compressor(spec), gamma, steps)
    assert errors[-1] <= 1e-3 * errors[0], (spec, used, errors[-1] / errors[0])
    assert np.all(np.isfinite(errors))


def test_per_tensor_compression_converges():
    def make() -> Compressor:
        return PerTensor(make_compressor("sign"), [64, 32, 32])

    errors, _ = consensus(make, 0.5, 150)
    assert errors[-1] <= 1e-3 * errors[0]


def test_consensus_cli_runs_a_composed_compressor(tmp_path):
    """The ``--compressor`` of ``python -m choco.consensus`` takes any spec."""
    from choco.consensus import main

    x0 = tmp_path / "X0.npy"
    np.save(x0, np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32))
    out = tmp_path / "out.npz"
    code = main(["--topology", "ring:8", "--compressor", "randk:0.5+qsgd:8", "--gamma", "0.3",
                 "--steps", "60", "--init", str(x0), "--out", str(out), "--quiet"])
    assert code == 0
    error = np.load(out)["error"]
    assert error[-1] < 1e-2 * error[0]

"""CHOCO-Gossip on the in-process network, checked against whole-network formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from choco.comm import CommError, LocalNetwork
from choco.compress import make_compressor
from choco.gossip import ChocoGossip, GossipError, lockstep
from topologies import parse_topology


def make_network(spec: str, compressor: str, gamma: float, seed: int = 0):
    topo = parse_topology(spec)
    net = LocalNetwork.from_matrix(topo.W)
    gossips = [ChocoGossip(c, topo.W[c.rank], make_compressor(compressor), gamma, seed)
               for c in net.comms]
    return topo.W, gossips


def rounds(gossips, xs, steps: int, each=None) -> None:
    for _ in range(steps):
        lockstep(gossips, xs)
        if each is not None:
            each()


def start(n: int, d: int = 64, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=gen, dtype=dtype) for _ in range(n)]


@pytest.mark.parametrize("spec", ["ring:8", "torus:3x3", "social", "star:5", "complete:4"])
def test_identity_gamma_one_is_exact_gossip(spec):
    """Q = identity, γ = 1: every round is x ← W x (arXiv:1902.00340, §3)."""
    W, gossips = make_network(spec, "identity", 1.0)
    xs = start(len(gossips))
    X0 = torch.stack(xs).numpy().copy()
    rounds(gossips, xs, 1)
    assert np.abs(torch.stack(xs).numpy() - W @ X0).max() < 1e-14
    rounds(gossips, xs, 9)
    ref = np.linalg.matrix_power(W, 10) @ X0
    assert np.abs(torch.stack(xs).numpy() - ref).max() < 1e-12


@pytest.mark.parametrize("compressor,gamma", [("identity", 0.7), ("sign", 0.3), ("topk:0.1", 0.2)])
@pytest.mark.parametrize("spec", ["ring:8", "social"])
def test_invariants_after_every_step(spec, compressor, gamma):
    """s_i = Σ_j w_ij x̂_j after every round, and the network mean never moves."""
    W, gossips = make_network(spec, compressor, gamma)
    xs = start(len(gossips), d=33)
    mean0 = torch.stack(xs).mean(0)
    worst = {"copy": 0.0, "mean": 0.0}

    def check():
        x_hat = torch.stack([g.state.x_hat for g in gossips]).numpy()
        s = torch.stack([g.state.s for g in gossips]).numpy()
        worst["copy"] = max(worst["copy"], np.abs(s - W @ x_hat).max())
        worst["mean"] = max(worst["mean"], (torch.stack(xs).mean(0) - mean0).abs().max().item())

    rounds(gossips, xs, 40, check)
    assert worst["copy"] < 1e-12
    assert worst["mean"] < 1e-12


@pytest.mark.parametrize("compressor,gamma,steps", [("sign", 0.2, 600), ("topk:0.1", 0.2, 600)])
def test_compressed_consensus_converges(compressor, gamma, steps):
    """Linear convergence (arXiv:1902.00340, Thm 2): error falls by >= 1e3 on ring:8."""
    _, gossips = make_network("ring:8", compressor, gamma)
    xs = start(8, d=50)
    mean0 = torch.stack(xs).mean(0)

    def error() -> float:
        return float(((torch.stack(xs) - mean0) ** 2).sum(1).mean())

    e0 = error()
    rounds(gossips, xs, steps)
    assert error() < e0 / 1e3


def test_decoded_message_updates_public_copy():
    """x̂ += Q(x - x̂) with the decoded message, not the pre-quantization difference."""
    _, gossips = make_network("ring:4", "sign", 0.5)
    xs = start(4, d=16)
    before = [x.clone() for x in xs]
    for g, x in zip(gossips, xs, strict=True):
        g.begin(x)
    for g, x in zip(gossips, xs, strict=True):
        g.finish(x)
    for g, x0 in zip(gossips, before, strict=True):
        scale = x0.abs().mean()
        expected = torch.where(x0 < 0, -scale, scale)
        assert torch.allclose(g.state.x_hat, expected, atol=1e-6)


def test_single_node_gossip_is_a_no_op():
    _, gossips = make_network("ring:1", "sign", 0.5)
    xs = start(1)
    x0 = xs[0].clone()
    rounds(gossips, xs, 5)
    assert torch.equal(xs[0], x0)


def test_checkpoint_with_exchange_in_flight_resumes_exactly():
    _, ref = make_network("ring:5", "topk:0.3", 0.4, seed=11)
    xs_ref = start(5)
    rounds(ref, xs_ref, 12)

    _, first = make_network("ring:5", "topk:0.3", 0.4, seed=11)
    xs = start(5)
    rounds(first, xs, 6)
    for g, x in zip(first, xs, strict=True):
        g.begin(x)
    saved = [g.state_dict() for g in first]
    assert all("pending_message" in sd for sd in saved)

    _, second = make_network("ring:5", "topk:0.3", 0.4, seed=11)
    for g, sd in zip(second, saved, strict=True):
        g.load_state_dict(sd)
    for g, x in zip(second, xs, strict=True):
        g.finish(x)
    rounds(second, xs, 5)
    for a, b in zip(xs, xs_ref, strict=True):
        assert torch.equal(a, b)


def test_call_order_and_configuration_errors():
    W, gossips = make_network("ring:3", "sign", 0.5)
    x = torch.zeros(4)
    with pytest.raises(GossipError, match="without begin"):
        gossips[0].finish(x)
    gossips[0].begin(x)
    with pytest.raises(GossipError, match="begin called twice"):
        gossips[0].begin(x)
    net = LocalNetwork.from_matrix(W)
    for gamma in (0.0, 1.5, -0.1):
        with pytest.raises(GossipError, match=r"\(0, 1\]"):
            ChocoGossip(net.comms[0], W[0], make_compressor("sign"), gamma)
    wrong = np.eye(3)
    with pytest.raises(GossipError, match="support"):
        ChocoGossip(net.comms[0], wrong[0], make_compressor("sign"), 0.5)


def test_lock_step_finish_before_all_begins_raises_instead_of_hanging():
    _, gossips = make_network("ring:3", "sign", 0.5)
    x = torch.ones(4)
    gossips[0].begin(x)
    with pytest.raises(CommError, match="has not posted"):
        gossips[0].finish(x)


def test_threaded_network_reports_the_failing_node():
    topo = parse_topology("ring:4")
    net = LocalNetwork.from_matrix(topo.W)

    def node(comm):
        if comm.rank == 2:
            raise RuntimeError("boom on node 2")
        return comm.allreduce(np.ones(1))

    with pytest.raises(RuntimeError, match="boom on node 2"):
        net.run(node)
    assert net.run(lambda c: float(c.allreduce(np.array([c.rank]))[0])) == [6.0] * 4

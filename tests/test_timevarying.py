"""CHOCO-Gossip on time-varying graphs (choco.timevarying), in process and over launchers.

Expectations are computed independently: the hypercube matrices from the XOR rule, the
matchings from the documented seeded draw, bytes from the compressor's message length, the
mean in float64 numpy. The launches (one mpiexec, one torchrun) compare real backends with
the in-process network bit for bit (``tests/mpi/schedule_check.py``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from choco.comm import LocalNetwork
from choco.compress import make_compressor
from choco.errors import UsageError
from choco.optim import ChocoSGD
from choco.timevarying import (
    GlobalAverage,
    TimeVaryingChocoGossip,
    make_choco_gossip,
    make_exact_gossip,
)
from topologies import parse_topology

from .helpers import TESTS, hypercube_matrix, run_mpi, run_torchrun


def network(spec: str, compressor: str | None, gamma: float = 1.0, seed: int = 0):
    topo = parse_topology(spec)
    net = LocalNetwork([topo.neighbors(i) for i in range(topo.n)])
    if compressor is None:
        return topo, net, [make_exact_gossip(c, topo) for c in net.comms]
    q = make_compressor(compressor)
    return topo, net, [make_choco_gossip(c, topo, q, gamma, seed) for c in net.comms]


def start(n: int, d: int = 40, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(row) for row in rng.standard_normal((n, d))]


def lockstep(gossips, xs, rounds: int = 1) -> None:
    for _ in range(rounds):
        for g, x in zip(gossips, xs, strict=True):
            g.begin(x)
        for g, x in zip(gossips, xs, strict=True):
            g.finish(x)


def error(xs, mean: np.ndarray) -> float:
    X = torch.stack(xs).numpy()
    return float(((X - mean) ** 2).sum() / len(xs))


def test_identity_gamma_one_on_onepeer_is_the_hypercube_product():
    n = 16
    _, _, gossips = network(f"onepeer:{n}", "identity")
    xs = start(n)
    X = torch.stack(xs).numpy().copy()
    mean = X.mean(axis=0)
    for t in range(4):
        lockstep(gossips, xs)
        X = hypercube_matrix(n, t) @ X
        got = torch.stack(xs).numpy()
        if t < 3:
            assert np.allclose(got, X, rtol=1e-12, atol=1e-12)
    assert np.allclose(torch.stack(xs).numpy(), np.broadcast_to(mean, X.shape),
                       rtol=1e-12, atol=1e-12 * np.abs(mean).max())


@pytest.mark.parametrize("n", [6, 12, 24])
def test_identity_on_base_reaches_the_exact_average_within_the_period(n):
    topo, _, gossips = network(f"base:{n}", "identity")
    xs = start(n, seed=n)
    mean = torch.stack(xs).numpy().mean(axis=0)
    lockstep(gossips, xs, topo.period - 1)
    assert error(xs, mean) > 1e-6  # not before the period ends
    lockstep(gossips, xs)
    assert error(xs, mean) < 1e-24 * max(1.0, float((mean**2).sum()))


def test_exact_baseline_on_a_schedule_is_the_matrix_product():
    n = 8
    _, _, gossips = network(f"onepeer:{n}", None)
    xs = start(n)
    X = torch.stack(xs).numpy().copy()
    for t in range(5):
        lockstep(gossips, xs)
        X = hypercube_matrix(n, t) @ X
        assert np.allclose(torch.stack(xs).numpy(), X, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,seed", [(16, 1), (9, 4)])
def test_identity_on_matchings_is_the_seeded_matching_and_converges_linearly(n, seed):
    _, _, gossips = network(f"matching:{n}:seed={seed}", "identity")
    xs = start(n)
    X = torch.stack(xs).numpy().copy()
    mean = X.mean(axis=0)
    errors = [error(xs, mean)]
    for t in range(90):
        lockstep(gossips, xs)
        perm = np.random.default_rng([seed, t]).permutation(n)
        W = np.eye(n)
        for m in range(n // 2):
            i, j = perm[2 * m], perm[2 * m + 1]
            W[i, i] = W[j, j] = W[i, j] = W[j, i] = 0.5
        X = W @ X
        errors.append(error(xs, mean))
    assert np.allclose(torch.stack(xs).numpy(), X, rtol=1e-10, atol=1e-12)
    for k in range(1, 4):  # a geometric decrease, sustained: each 30 rounds gain > 100x
        assert errors[30 * k] < errors[30 * (k - 1)] / 100


@pytest.mark.parametrize("compressor,gamma,rounds,gain", [
    ("sign", 0.2, 600, 1e2), ("topk:0.1", 0.1, 400, 1e4)])
@pytest.mark.parametrize("spec", ["onepeer:16", "base:12", "matching:16", "ring:8+pga:16"])
def test_choco_converges_and_keeps_the_mean_on_every_schedule(spec, compressor, gamma, rounds,
                                                               gain):
    topo, net, gossips = network(spec, compressor, gamma, seed=3)
    xs = start(topo.n, seed=7)
    mean = torch.stack(xs).numpy().mean(axis=0)
    e0 = error(xs, mean)
    errors = []

    def node(comm):  # one thread per node: the global average of +pga is a collective
        g, x = gossips[comm.rank], xs[comm.rank]
        for t in range(rounds):
            g.step(x)
            if t % 100 == 99:
                comm.barrier()
                if comm.rank == 0:
                    errors.append(error(xs, mean))
                comm.barrier()

    net.run(node)
    X = torch.stack(xs).numpy()
    assert np.abs(X.mean(axis=0) - mean).max() < 1e-12  # network mean kept, to round-off
    assert errors[-1] < e0 / gain
    assert errors[-1] < errors[len(errors) // 2 - 1]  # still decreasing


@pytest.mark.parametrize("spec,messages_per_round", [
    ("onepeer:16", lambda n: n), ("matching:16:seed=2", lambda n: n),
    ("matching:7", lambda n: n - 1), ("base:12", None)])
def test_bytes_are_one_message_per_active_edge(spec, messages_per_round):
    topo, _, gossips = network(spec, "topk:0.1", 0.2)
    d = 40
    xs = start(topo.n, d)
    msg = make_compressor("topk:0.1").nbytes(d, torch.float64)
    rounds = 7
    lockstep(gossips, xs, rounds)
    sent = [g.bytes_sent for g in gossips]
    active = sum(2 * len(topo.pairs(t)) for t in range(rounds))  # both ends send
    assert sum(sent) == active * msg
    if messages_per_round is not None:  # one peer per round: one message per node
        assert sum(sent) == rounds * messages_per_round(topo.n) * msg
        if topo.n % 2 == 0:
            assert sent == [rounds * msg] * topo.n


def test_global_average_is_exact_and_counted():
    _, net, gossips = network("ring:8+pga:4", "sign", 0.4)
    assert all(isinstance(g, GlobalAverage) for g in gossips)
    d = 40
    xs = start(8, d)
    mean = torch.stack(xs).numpy().mean(axis=0)
    net.run(lambda comm: [gossips[comm.rank].step(xs[comm.rank]) for _ in range(4)])
    X = torch.stack(xs).numpy()
    assert (X == X[0]).all()  # every node holds the same average, bit for bit
    assert np.allclose(X[0], mean, rtol=0, atol=1e-12)
    msg = make_compressor("sign").nbytes(d, torch.float64)
    allreduce = round(2 * 7 / 8 * d * 8)
    assert [g.bytes_sent for g in gossips] == [4 * 2 * msg + allreduce] * 8


def test_a_static_spec_keeps_todays_gossip():
    from choco.gossip import ChocoGossip

    _, _, gossips = network("ring:8", "sign", 0.4)
    assert all(type(g) is ChocoGossip for g in gossips)


def _quadratic_nodes(spec: str, net, topo, seed: int = 0):
    """Per node: ChocoSGD over a 1-parameter-vector model minimizing ½‖w − c_i‖²."""
    rng = np.random.default_rng(seed)
    targets = torch.from_numpy(rng.standard_normal((topo.n, 30)))
    q = make_compressor("topk:0.3")
    nodes = []
    for c in net.comms:
        w = torch.nn.Parameter(torch.zeros(30, dtype=torch.float64))
        opt = ChocoSGD(torch.optim.SGD([w], lr=0.1, momentum=0.9),
                       make_choco_gossip(c, topo, q, 0.3, seed=9))
        nodes.append((w, opt, targets[c.rank]))
    return nodes


def _train(nodes, steps: int) -> None:
    for _ in range(steps):
        for w, opt, target in nodes:
            opt.zero_grad()
            (0.5 * ((w - target) ** 2).sum()).backward()
            opt.step()


@pytest.mark.parametrize("spec", ["base:6", "matching:6:seed=1", "ring:6+pga:3"])
def test_resume_in_the_middle_of_a_period_is_exact(spec):
    topo = parse_topology(spec)

    def fresh():
        net = LocalNetwork([topo.neighbors(i) for i in range(topo.n)])
        return net, _quadratic_nodes(spec, net, topo)

    if topo.pga_every:  # the global average is a collective: one thread per node
        def train(net, nodes, steps, load=None):
            def node(comm):
                w, opt, target = nodes[comm.rank]
                if load is not None:
                    opt.load_state_dict(load[comm.rank])
                for _ in range(steps):
                    opt.zero_grad()
                    (0.5 * ((w - target) ** 2).sum()).backward()
                    opt.step()
            net.run(node)
    else:
        def train(net, nodes, steps, load=None):
            if load is not None:
                for (_, opt, _), sd in zip(nodes, load, strict=True):
                    opt.load_state_dict(sd)
            _train(nodes, steps)

    net, whole = fresh()
    train(net, whole, 10)
    net, first = fresh()
    train(net, first, 6)  # base:6 has period 4: stop at round 2 of the second period
    saved = [opt.state_dict() for _, opt, _ in first]  # the model is saved apart, as in
    weights = [w.detach().clone() for w, _, _ in first]  # choco-train's checkpoints
    assert all(opt.gossip.in_flight for _, opt, _ in first)  # a message is in flight
    net, second = fresh()
    with torch.no_grad():
        for (w, _, _), saved_w in zip(second, weights, strict=True):
            w.copy_(saved_w)
    train(net, second, 4, load=saved)
    for (w1, _, _), (w2, _, _) in zip(whole, second, strict=True):
        assert torch.equal(w1.detach(), w2.detach())
    if spec == "base:6":  # 5 rounds finished (round 1 of the second period), 1 in flight
        assert saved[0]["gossip"]["round"] == 5


def test_dcd_refuses_a_time_varying_schedule():
    from choco.run.algorithms import get_algorithm

    with pytest.raises(UsageError, match="stale"):
        get_algorithm("dcd").check_topology(parse_topology("onepeer:8"))
    get_algorithm("exact").check_topology(parse_topology("onepeer:8"))


def test_size_less_specs_take_the_number_of_nodes():
    from choco.run.plan import resolve_topology

    assert resolve_topology("onepeer", "metropolis", 8, mpi=True).spec == "onepeer:8"
    assert resolve_topology("base+pga:2", "metropolis", 6).spec == "base:6+pga:2"
    with pytest.raises(UsageError, match="has 8 nodes"):
        resolve_topology("onepeer:8", "metropolis", 4)


def test_stateful_compressors_are_refused():
    topo = parse_topology("onepeer:4")
    net = LocalNetwork([topo.neighbors(i) for i in range(4)])
    with pytest.raises(Exception, match="per-node state"):
        TimeVaryingChocoGossip(net.comms[0], topo, make_compressor("lgc"), 0.5)


# ---------------------------------------------------------------------------- launches
@pytest.mark.mpi
@pytest.mark.slow
def test_mpiexec_equals_in_process_bit_for_bit(tmp_path):
    out = tmp_path / "mpi.json"
    specs = ["base:6", "base:6:2+pga:3", "matching:6:seed=3", "ring:6+pga:4"]
    proc = run_mpi(6, [str(TESTS / "mpi" / "schedule_check.py"), "mpi", str(out), *specs])
    assert proc.returncode == 0, proc.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    assert len(checks) == len(specs) * 4 * 2
    assert all(checks.values()), {k: v for k, v in checks.items() if not v}


@pytest.mark.torchrun
@pytest.mark.slow
def test_torchrun_equals_in_process_bit_for_bit(tmp_path):
    out = tmp_path / "torch.json"
    specs = ["onepeer:4", "matching:4:seed=2", "onepeer:4+pga:3"]
    proc = run_torchrun(4, [str(TESTS / "mpi" / "schedule_check.py"), "torch", str(out),
                            *specs])
    assert proc.returncode == 0, proc.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    assert len(checks) == len(specs) * 4 * 2
    assert all(checks.values()), {k: v for k, v in checks.items() if not v}

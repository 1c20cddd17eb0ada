"""The simulated clock against formulas computed by hand (docs/simulation.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from choco.baselines import ExactGossip
from choco.comm import LocalNetwork
from choco.compress import make_compressor
from choco.errors import UsageError
from choco.gossip import ChocoGossip
from choco.optim import AllReduceSGD, ChocoSGD
from choco.run import consensus, train
from choco.sim import local_step, now, parse_network
from topologies import parse_topology

ALPHA, GBIT = 50e-6, 1e9


def ring_net(n: int, network: str) -> tuple[LocalNetwork, np.ndarray]:
    topo = parse_topology(f"ring:{n}")
    return LocalNetwork([topo.neighbors(i) for i in range(n)], network=network), topo.W


def consensus_run(tmp_path, network: str, *extra: str, name: str = "c") -> dict:
    out = tmp_path / f"{name}.npz"
    argv = ["--network", network, "--out", str(out), "--json", "--quiet", *extra]
    assert consensus.main(argv) == 0
    return dict(np.load(out))


def test_identity_on_ring_8_costs_two_messages_per_round(tmp_path, capsys):
    steps, dim = 12, 500
    data = consensus_run(tmp_path, "bandwidth=1g,latency=50us", "--topology", "ring:8",
                         "--compressor", "identity", "--steps", str(steps), "--dim", str(dim))
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    message = make_compressor("identity").nbytes(dim, torch.float64)  # float64 rows of X0
    per_round = 2 * (ALPHA + message * 8 / GBIT)  # two neighbours, one after the other
    assert data["sim_time_s"].shape == (steps + 1,)
    assert data["sim_time_s"][0] == 0
    assert data["sim_time_s"] == pytest.approx(per_round * np.arange(steps + 1), rel=1e-12)
    assert line["sim_time_s"] == pytest.approx(steps * per_round, rel=1e-12)


def test_all_reduce_costs_the_ring_formula_after_a_global_wait():
    n, steps, compute = 4, 5, 0.02
    net, _ = ring_net(n, f"bandwidth=1g,latency=50us,compute={compute * 1e3:g}ms,slow=2:3")

    def node(comm):
        torch.manual_seed(0)
        model = torch.nn.Linear(10, 3)
        opt = AllReduceSGD(torch.optim.SGD(model.parameters(), lr=0.1), comm)
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 10)).sum().backward()
            opt.step()
        return now()

    times = net.run(node)
    size = 4 * (10 * 3 + 3)  # fp32 gradient bytes
    ring = 2 * (n - 1) * ALPHA + 2 * (n - 1) / n * size * 8 / GBIT
    # node 2 computes 3x slower and everyone waits for it at every all-reduce
    assert times == pytest.approx([steps * (3 * compute + ring)] * n, rel=1e-12)


def choco_training(order: str, network: str, steps: int = 6) -> tuple[list[float], int]:
    net, W = ring_net(8, network)

    def node(comm):
        torch.manual_seed(0)
        model = torch.nn.Linear(20, 1)
        gossip = ChocoGossip(comm, W[comm.rank], make_compressor("sign"), 0.5)
        opt = ChocoSGD(torch.optim.SGD(model.parameters(), lr=0.01), gossip, order=order)
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(8, 20)).sum().backward()
            opt.step()
        opt.flush()
        return now()

    return net.run(node), make_compressor("sign").nbytes(21)


@pytest.mark.parametrize("compute_ms", [0.1, 5.0])  # link-bound and compute-bound
def test_overlap_hides_the_exchange_behind_the_next_step_sync_does_not(compute_ms):
    steps, C = 6, compute_ms / 1e3
    spec = f"bandwidth=10m,latency=1ms,compute={compute_ms}ms"
    sync, message = choco_training("sync", spec, steps)
    overlap, _ = choco_training("overlap", spec, steps)
    u = 1e-3 + message * 8 / 10e6  # one message on a 10 Mbit/s link
    assert sync == pytest.approx([steps * (C + 2 * u)] * 8, rel=1e-12)
    # the first step's exchange is not hidden by an earlier one, then max(C, 2u) per step
    assert overlap == pytest.approx([C + 2 * u + (steps - 1) * max(C, 2 * u)] * 8, rel=1e-12)


def straggler_times(n: int, rounds: int, compute: float, factor: float) -> list[float]:
    net, W = ring_net(n, f"compute={compute * 1e3:g}ms,slow=0:{factor:g}")

    def node(comm):
        x = torch.full((10,), float(comm.rank))
        gossip = ChocoGossip(comm, W[comm.rank], make_compressor("sign"), 0.5)
        for _ in range(rounds):
            local_step()
            gossip.step(x)
        return now()

    return net.run(node)


def test_a_straggler_slows_its_neighbours_first_and_everyone_after_a_few_rounds():
    """Free links: T_i(t) = max over j in N[i] of T_j(t−1) + C_j. With node 0 F times
    slower, node i at ring distance d ≥ 1 has T_i(t) = t·C for t < d and
    (d − 1)·C + (t − d + 1)·F·C after (walk to node 0 and wait there)."""
    n, C, F = 10, 0.01, 4.0

    def expected(i: int, t: int) -> float:
        d = min(i, n - i)
        if d == 0:
            return t * F * C
        return t * C if t < d else (d - 1) * C + (t - d + 1) * F * C

    for rounds in (1, 2, 5, 7):
        times = straggler_times(n, rounds, C, F)
        assert times == pytest.approx([expected(i, rounds) for i in range(n)], rel=1e-12)
    after_one = straggler_times(n, 1, C, F)
    assert after_one[1] == after_one[9] == pytest.approx(F * C)  # neighbours slowed at once
    assert after_one[5] == pytest.approx(C)  # the far side not yet
    after_two = straggler_times(n, 2, C, F)
    assert after_two[5] - after_one[5] == pytest.approx(C)  # still at its own pace
    # from n/2 rounds on, every node moves at the straggler's pace, F·C per round
    after_five, after_seven = straggler_times(n, 5, C, F), straggler_times(n, 7, C, F)
    assert [b - a for a, b in zip(after_five, after_seven, strict=True)] == pytest.approx(
        [2 * F * C] * n, rel=1e-9)


def one_round_times(gossip_cls, n: int, spec: str, numel: int) -> list[float]:
    """Each node's simulated time after one round (begin, finish) of ``gossip_cls``."""
    net, W = ring_net(n, spec)

    def node(comm):
        x = torch.full((numel,), float(comm.rank))
        if gossip_cls is ChocoGossip:
            gossip = ChocoGossip(comm, W[comm.rank], make_compressor("identity"), 0.5)
        else:
            gossip = gossip_cls(comm, W[comm.rank])
        gossip.begin(x)
        gossip.finish(x)
        return now()

    return net.run(node)


@pytest.mark.parametrize("decode_over_link", [3.0, 0.2])  # decode-bound and link-bound
def test_choco_decodes_each_message_as_it_arrives_the_exact_baseline_after_the_exchange(
        decode_over_link):
    """ring:3, links 1 Mbit/s without latency, nothing but the round. Node j sends to its
    sorted neighbours one after another, so the message of the k-th listed receiver arrives
    k·u after the post (u = 8m/β): node 0 gets 1's and 2's messages at u, u; node 1 gets
    0's at u and 2's at 2u; node 2 gets both at 2u; every node's own sends end at 2u.
    Decoding in neighbour order as they arrive (decode time D):
    node 0: max(u + 2D, 2u); node 1: max(max(u + D, 2u) + D, 2u); node 2: 2u + 2D.
    Decoding after the whole exchange (ExactGossip): 2u + 2D everywhere."""
    numel = 1000
    m = make_compressor("identity").nbytes(numel)
    u = m * 8 / 1e6
    D = decode_over_link * u
    spec = f"bandwidth=1m,latency=0,decode={D * 1e3!r}ms"
    choco = one_round_times(ChocoGossip, 3, spec, numel)
    assert choco == pytest.approx([max(u + 2 * D, 2 * u), max(max(u + D, 2 * u) + D, 2 * u),
                                   2 * u + 2 * D], rel=1e-12)
    exact = one_round_times(ExactGossip, 3, spec, numel)
    assert exact == pytest.approx([2 * u + 2 * D] * 3, rel=1e-12)
    assert choco[0] < exact[0]  # the decode-while-arriving credit


BUSY = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"


def test_two_runs_under_different_host_load_give_identical_simulated_times(tmp_path, capsys):
    spec = "bandwidth=100m,latency=20us,compute=5ms,slow=1:3,jitter=0.3,seed=7"
    args = ("--topology", "torus:3x3", "--compressor", "topk:0.1", "--steps", "40",
            "--dim", "300", "--gamma", "0.3")
    quiet = consensus_run(tmp_path, spec, *args, name="quiet")
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(3)]
    try:
        loaded = consensus_run(tmp_path, spec, *args, name="loaded")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert np.array_equal(quiet["sim_time_s"], loaded["sim_time_s"])
    assert np.array_equal(quiet["x"], loaded["x"])
    assert quiet["sim_time_s"][-1] > 40 * 5e-3  # compute was charged


def test_per_link_bandwidth_and_per_node_compute_from_a_file(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text('[[link]]\nnodes = [1, 0]\nbandwidth = "1m"\nlatency = "2ms"\n\n'
                    '[[node]]\nid = 2\ncompute = 3.0\n')
    net, W = ring_net(4, f"bandwidth=1g,latency=50us,compute=10ms,file={path}")
    message = make_compressor("identity").nbytes(16)

    def node(comm):
        x = torch.ones(16)
        local_step()
        ChocoGossip(comm, W[comm.rank], make_compressor("identity"), 1.0).step(x)
        return now()

    times = net.run(node)
    u = ALPHA + message * 8 / GBIT  # ordinary link
    v = 2e-3 + message * 8 / 1e6  # link 0-1, far slower
    C = 10e-3
    # neighbours: 0:[1,3] 1:[0,2] 2:[1,3] 3:[0,2]; messages leave in that order.
    # node 0 sends v then u (nic free at C+v+u); node 1 the same; nodes 2 and 3 start at
    # 3C (node 2 is slow) and C; everyone also waits for its neighbours' messages.
    expected = [
        max(C + v + u, C + v, C + u),              # 0: own sends, from 1, from 3
        max(C + v + u, C + v, 3 * C + u),          # 1: own sends, from 0, from 2
        max(3 * C + 2 * u, C + v + u, C + 2 * u),  # 2: own sends, from 1, from 3
        max(C + 2 * u, C + v + u, 3 * C + 2 * u),  # 3: own sends, from 0, from 2
    ]
    assert times == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize(("spec", "match"), [
    ("bandwith=1g", "unknown key 'bandwith'; did you mean bandwidth"),
    ("bandwidth=-1g", "bandwidth must be a positive bit rate .*not negative.*got '-1g'"),
    ("bandwidth=0", "bandwidth must be a positive bit rate"),
    ("latency=5 parsecs", "latency must be a duration"),
    ("compute=fast", "compute must be a duration"),
    ("slow=3", "slow must be NODE:FACTOR"),
    ("slow=3:0", "factor > 0"),
    ("jitter=-1", "jitter must be a number >= 0"),
    ("bandwidth", "entries are key=value"),
])
def test_bad_specs_get_one_clear_error(spec, match):
    with pytest.raises(UsageError, match=match):
        parse_network(spec)


def test_slow_node_outside_the_graph_and_a_link_that_is_no_edge(tmp_path):
    with pytest.raises(UsageError, match=r"slow names node 8, but the graph has nodes 0\.\.7"):
        ring_net(8, "slow=8:2")
    path = tmp_path / "net.toml"
    path.write_text('[[link]]\nnodes = [0, 4]\nbandwidth = "1m"\n')
    with pytest.raises(UsageError, match="link 0-4, which is not an edge"):
        ring_net(8, f"file={path}")


def test_network_with_a_process_per_node_backend_says_real_time_is_measured(capsys):
    for main, extra in ((train.main, ["--out", "unused"]),
                        (consensus.main, ["--out", "unused.npz"])):
        assert main(["--network", "bandwidth=1g", "--backend", "mpi", *extra]) == 2
        err = capsys.readouterr().err
        assert "--network simulates a network for an in-process run" in err
        assert "real time is measured" in err and "--backend local" in err


def test_sweep_table_and_list_become_one_spec():
    spec = parse_network({"bandwidth": "1g", "slow": ["3:4", "5:2"], "compute": "20ms"})
    assert spec.slow == {3: 4.0, 5: 2.0} and spec.compute == pytest.approx(0.02)
    assert parse_network(spec.text) == spec


def test_training_rows_config_and_progress_carry_the_simulated_time(tmp_path, capsys):
    out, C = tmp_path / "run", 0.03
    spec = "bandwidth=1g,latency=50us,compute=30ms"
    assert train.main(["--backend", "local", "--topology", "ring:4", "--epochs", "2",
                       "--gamma", "0.5", "--network", spec, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    S, u = cfg["steps_per_epoch"], ALPHA + cfg["message_bytes"] * 8 / GBIT
    assert C > 2 * u  # compute-bound: the exchange hides behind the next step (overlap)
    # epoch e ends when the last node's last message of the epoch has left: e·S·C + 2u
    assert [r["sim_time_s"] for r in rows] == pytest.approx([S * C + 2 * u, 2 * S * C + 2 * u],
                                                            abs=1e-6)
    assert cfg["config"]["network"] == spec and cfg["network"]["compute_s"] == C
    epochs = [line for line in printed.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and all("simulated" in line for line in epochs)
    assert f"simulated {rows[-1]['sim_time_s']:.3f}s" in epochs[-1]


# ------------------------------------------------------------------ one thread for all nodes
@pytest.mark.parametrize("topology,network", [
    ("ring:7", "bandwidth=1g,latency=50us,compute=1ms"),
    ("star:6", "bandwidth=100m,latency=20us,compute=1ms,encode=30us,decode=10us,slow=0:3"),
    ("torus:9", "bandwidth=1g,compute=2ms,jitter=0.3,seed=7,slow=4:2;8:1.5"),
    ("complete:5", "file"),
])
@pytest.mark.parametrize("each", [False, True])
def test_lockstep_clock_matches_the_clock_methods_node_by_node(tmp_path, topology, network,
                                                               each):
    """:class:`LockstepClock` (numpy over the nodes) against :func:`lockstep_round` (the
    clock's own per-node methods): the same cpu and NIC times of every node after every
    round, with message lengths that differ between nodes and rounds, for both receive
    rules (decode after the whole exchange, or each message as it arrives)."""
    from choco.sim.clock import LockstepClock, NetworkClock, lockstep_round

    if network == "file":
        path = tmp_path / "net.toml"
        path.write_text('[[link]]\nnodes = [0, 3]\nbandwidth = "10m"\nlatency = "1ms"\n\n'
                        '[[node]]\nid = 2\ncompute = 2.5\n')
        network = f"bandwidth=1g,latency=50us,compute=1ms,decode=5us,file={path}"
    topo = parse_topology(topology)
    neighbors = [topo.neighbors(i) for i in range(topo.n)]
    reference, vector = NetworkClock(network, neighbors), NetworkClock(network, neighbors)
    fast = LockstepClock(vector)
    rng = np.random.default_rng(1)
    for _ in range(6):
        nbytes = rng.integers(1, 5000, topo.n).tolist()
        lockstep_round(reference, nbytes, each)
        fast.round(nbytes, each)
        assert [(t.cpu, t.nic) for t in vector.times] == [(t.cpu, t.nic) for t in reference.times]
    assert vector.steps == reference.steps == [6] * topo.n
    assert reference.finished() > 0


def test_one_thread_clocks_refuse_measured_compute():
    from choco.errors import CommError
    from choco.sim.clock import LockstepClock, NetworkClock, lockstep_round

    clock = NetworkClock("compute=measured", [[1], [0]])
    with pytest.raises(CommError, match="compute=measured"):
        lockstep_round(clock, [10, 10])
    with pytest.raises(CommError, match="compute=measured"):
        LockstepClock(clock)

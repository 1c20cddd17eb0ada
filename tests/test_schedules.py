"""Time-varying topology specs (topologies.schedule), checked against independent matrices.

The one-peer hypercube's rounds are rebuilt here from the XOR rule; the Base-(k+1) graphs and
the matchings are checked through their defining properties (symmetric doubly stochastic
non-negative rounds, at most K peers, the period's product equal to 11ᵀ/n) and the
documented draw ``numpy.random.default_rng([seed, t]).permutation(n)``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from topologies import Schedule, TopologyError, parse_topology

from .helpers import hypercube_matrix, run_python


def assert_mixing(W: np.ndarray) -> None:
    assert np.allclose(W, W.T, atol=0)
    assert (W >= 0).all()
    assert np.allclose(W.sum(axis=1), 1.0, atol=1e-15)


@pytest.mark.parametrize("n", [2, 8, 16, 64])
def test_onepeer_rounds_are_the_hypercube_pairings(n):
    s = parse_topology(f"onepeer:{n}")
    tau = n.bit_length() - 1
    assert isinstance(s, Schedule) and s.time_varying and s.period == tau
    for t in range(2 * tau + 1):
        assert np.array_equal(s.matrix(t), hypercube_matrix(n, t))
        for i in range(n):
            assert list(s.round_weights(i, t)) == [i ^ (1 << (t % tau))]
    assert len(s.edges) == n * tau // 2
    P = np.eye(n)
    for t in range(tau):
        P = hypercube_matrix(n, t) @ P
    assert np.allclose(P, np.full((n, n), 1.0 / n), rtol=0, atol=1e-15)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("n", [3, 5, 6, 7, 10, 12, 13, 24, 27])
def test_base_graph_averages_exactly_within_its_period_with_at_most_k_peers(n, k):
    s = parse_topology(f"base:{n}:{k}")
    P = np.eye(n)
    for t in range(s.period):
        W = s.matrix(t)
        assert_mixing(W)
        peers = (W > 0).sum(axis=1) - (np.diag(W) > 0)
        assert peers.max() <= k
        P = W @ P
    assert np.allclose(P, np.full((n, n), 1.0 / n), rtol=0, atol=1e-12)
    # fewer rounds than the period do not average exactly (the period is not padded)
    Q = np.eye(n)
    for t in range(s.period - 1):
        Q = s.matrix(t) @ Q
    assert not np.allclose(Q, 1.0 / n, atol=1e-9)
    assert s.matrix(s.period).tolist() == s.matrix(0).tolist()  # periodic


def test_base_default_is_one_peer_and_beats_a_ring_on_rounds():
    s = parse_topology("base:12")
    assert s.max_peers == 1
    assert s.period <= 2 * int(np.ceil(np.log2(12)))  # 5 rounds; a ring never averages exactly


@pytest.mark.parametrize("n,seed", [(16, 0), (16, 7), (9, 3)])
def test_matching_is_the_documented_seeded_draw(n, seed):
    s = parse_topology(f"matching:{n}:seed={seed}")
    assert s.period is None and len(s.edges) == n * (n - 1) // 2
    for t in (0, 1, 5, 1000):
        perm = np.random.default_rng([seed, t]).permutation(n)
        expected = {tuple(sorted((int(perm[2 * m]), int(perm[2 * m + 1]))))
                    for m in range(n // 2)}
        assert set(s.pairs(t)) == expected
        W = s.matrix(t)
        assert_mixing(W)
        idle = [i for i in range(n) if W[i, i] == 1.0]
        assert len(idle) == n % 2
    assert s.pairs(0) != parse_topology(f"matching:{n}:seed={seed + 1}").pairs(0)


def test_pga_modifier_on_static_and_time_varying_specs():
    ring = parse_topology("ring:16+pga:8")
    assert ring.pga_every == 8 and not ring.time_varying and ring.period == 1
    assert np.array_equal(ring.W, parse_topology("ring:16").W)
    one = parse_topology("onepeer:8+pga:2")
    assert one.pga_every == 2 and one.time_varying
    assert np.array_equal(one.matrix(1), hypercube_matrix(8, 1))


@pytest.mark.parametrize("spec,words", [
    ("onepeer:12", ["power of two", "12", "base:12"]),
    ("base:0", ["positive integer", "'0'"]),
    ("matching:8:seed=x", ["seed=S", "'seed=x'"]),
    ("ring:8+pga:0", ["pga:H", "'pga:0'"]),
    ("base:8:0", ["K", "'0'"]),
])
def test_bad_specs_get_one_clear_error(spec, words):
    with pytest.raises(TopologyError) as info:
        parse_topology(spec)
    for word in words:
        assert word in str(info.value)


def test_cli_prints_union_graph_period_and_rounds():
    proc = run_python(["-m", "topologies", "onepeer:8", "--json"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["period"] == 3 and record["n"] == 8 and record["max_peers"] == 1
    assert len(record["edges"]) == 12
    for t, pairs in enumerate(record["rounds"]):
        assert sorted((i, j) for i, j, _ in pairs) == sorted(
            (i, i ^ (1 << t)) for i in range(8) if i < i ^ (1 << t))
    text = run_python(["-m", "topologies", "base:6"], timeout=120)
    assert text.returncode == 0 and "period" in text.stdout and "round 0" in text.stdout
    bad = run_python(["-m", "topologies", "onepeer:12"], timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("error:") == 1 and "power of two" in bad.stderr

"""The shaped-link comparison's pure-Python part (experiments/netns/compare_sim.py) on
made-up measurements: the network specs it derives, the rows it prints and the files it
finds. The harness itself (root, namespaces, minutes) is not part of the suite."""

from __future__ import annotations

import json

import pytest

from choco.compress import make_compressor
from choco.sim import parse_network
from experiments.netns import compare_sim


def test_gossip_spec_uses_each_runs_own_cpu_times_and_per_rank_factors():
    row = {"encode_ms": 99.0, "decode_update_ms": 99.0,  # the means are not what is used
           "rank_encode_ms": [2.0, 4.0], "rank_decode_update_ms": [6.0, 12.0]}
    spec = parse_network(compare_sim.gossip_network(row, degree=2, gbit=1, latency_us=50))
    assert spec.bandwidth == pytest.approx(1e9 * 1448 / 1514)  # TCP payload of 1 Gbit/s
    assert spec.latency == pytest.approx(50e-6)
    assert spec.encode == pytest.approx(3e-3)  # mean of 2 and 4 ms
    assert spec.decode == pytest.approx(9e-3 / 2)  # mean 9 ms over two messages
    # rank CPU 8 and 16 ms around a mean of 12 ms
    assert spec.factor(0) == pytest.approx(8 / 12, rel=1e-6)
    assert spec.factor(1) == pytest.approx(16 / 12, rel=1e-6)
    # a row without per-rank times falls back to the means, no factors
    plain = parse_network(compare_sim.gossip_network(
        {"encode_ms": 1.5, "decode_update_ms": 3.0}, degree=1, gbit=2, latency_us=0))
    assert (plain.encode, plain.decode, plain.factor(0)) == pytest.approx((1.5e-3, 3e-3, 1))


def test_training_spec_splits_each_ranks_time_into_compute_encode_and_decode():
    timings = [  # 100 steps, 99 finishes, degree 2
        {"rank": 0, "degree": 2, "steps": 100, "rounds": 99, "train_s": 1.0,
         "begin_s": 0.1, "finish_s": 0.3, "wait_s": 0.102},
        {"rank": 1, "degree": 2, "steps": 100, "rounds": 99, "train_s": 2.0,
         "begin_s": 0.3, "finish_s": 0.5, "wait_s": 0.104},
    ]
    spec = parse_network(compare_sim.train_network(timings, gbit=1, latency_us=50))
    c0, c1 = (1.0 - 0.1 - 0.3) / 100, (2.0 - 0.3 - 0.5) / 100
    e0, e1 = 0.1 / 100, 0.3 / 100
    d0, d1 = (0.3 - 0.102) / (99 * 2), (0.5 - 0.104) / (99 * 2)
    assert spec.compute == pytest.approx((c0 + c1) / 2, rel=1e-6)
    assert spec.encode == pytest.approx((e0 + e1) / 2, rel=1e-6)
    assert spec.decode == pytest.approx((d0 + d1) / 2, rel=1e-6)
    cpu0, cpu1 = c0 + e0 + 2 * d0, c1 + e1 + 2 * d1
    assert spec.factor(0) == pytest.approx(cpu0 / ((cpu0 + cpu1) / 2), rel=1e-5)
    assert spec.factor(1) == pytest.approx(cpu1 / ((cpu0 + cpu1) / 2), rel=1e-5)


def test_rows_report_the_error_of_the_medians_and_the_20_percent_verdict():
    assert compare_sim.error(90.0, 100.0) == pytest.approx(-0.1)
    line = compare_sim.row_line("x", 100.0, 79.0, [-0.3, -0.21, 0.05])
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["x", "100.0", "79.0", "-21.0 %", "-30.0 … +5.0 %", "**no**"]
    ok = [c.strip() for c in compare_sim.row_line("y", 50.0, 59.5).strip("|").split("|")]
    assert ok[3:] == ["+19.0 %", "", "yes"]


def test_measurement_files_are_found_by_ranks_and_repeat(tmp_path):
    for name in ["gossip-n4-r2.txt", "gossip-n2-r1.txt", "gossip-n4-r1.txt", "gossip-nX-r1.txt",
                 "notes.txt"]:
        (tmp_path / name).write_text("table\n" + json.dumps({"n": 0}) + "\n")
    found = compare_sim.gossip_files(tmp_path)
    assert {n: [p.name for p in ps] for n, ps in found.items()} == {
        2: ["gossip-n2-r1.txt"], 4: ["gossip-n4-r1.txt", "gossip-n4-r2.txt"]}
    assert compare_sim.read(tmp_path / "gossip-n2-r1.txt") == {"n": 0}
    (tmp_path / "empty.txt").write_text("no json here\n")
    with pytest.raises(SystemExit, match="no JSON line"):
        compare_sim.read(tmp_path / "empty.txt")


def test_one_round_on_the_clock_rules_equals_the_in_process_consensus_round():
    """round_on_clock applies the clock's post/receive_each rules by hand; the in-process
    consensus (LocalNetwork, NetworkClock, ChocoGossip) must give the same first round."""
    n, numel, gbit, latency_us = 4, 1000, 0.001, 100.0  # 1 Mbit/s: the link matters
    encode, decode = 2.0, 3.0  # ms; decode is per round, over the degree 2
    factors = [1.0, 1.5, 0.5, 2.0]
    row = {"encode_ms": 0.0, "decode_update_ms": 0.0,
           "rank_encode_ms": [encode * f for f in factors],
           "rank_decode_update_ms": [decode * f for f in factors]}
    network = compare_sim.gossip_network(row, 2, gbit, latency_us)
    in_process = compare_sim.simulated_round(n, numel, "sign", network, rounds=1)
    nbytes = make_compressor("sign").nbytes(numel)
    by_hand = compare_sim.round_on_clock(n, nbytes, row["rank_encode_ms"],
                                         row["rank_decode_update_ms"], gbit, latency_us)
    assert 1e3 * in_process == pytest.approx(by_hand, rel=1e-9)
    # and the link's payload time is in it: at least encode + two messages on the slowest
    wire = latency_us * 1e-6 + nbytes * 8 / (gbit * 1e9 * 1448 / 1514)
    assert by_hand >= 1e3 * (2 * wire) + encode * 2.0


def test_training_repeats_are_grouped_and_long_waits_counted(tmp_path):
    for name in ["train-sign-r2", "train-sign-r1", "train-topk_0.01-r1", "train-x"]:
        (tmp_path / name).mkdir()
    (tmp_path / "train-sign-r3").write_text("a file, not a run")
    found = compare_sim.train_folders(tmp_path)
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "sign": ["train-sign-r1", "train-sign-r2"], "topk_0.01": ["train-topk_0.01-r1"]}
    timings = [{"waits_ms": [1.0, 12.0, 30.0, 9.9]}, {"waits_ms": [10.0, 10.1]}]
    assert compare_sim.long_waits(timings) == pytest.approx(3 / 6)  # 12, 30, 10.1
    assert compare_sim.long_waits([{}]) == 0.0

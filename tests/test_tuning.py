"""The consensus-only γ tuner against the paper's numbers."""

from __future__ import annotations

import pytest

from choco.tuning import theoretical_gamma, tune_gamma
from topologies import parse_topology


@pytest.mark.parametrize("delta,expected", [(1.0, 4.1e-3), (0.1, 3.5e-4), (0.01, 3.5e-5)])
def test_theoretical_gamma_on_ring8_matches_paper_values(delta, expected):
    """docs/gamma.md: ring n=8 (ρ = 0.195, β = 4/3) gives 4.1e-3 / 3.5e-4 / 3.5e-5."""
    W = parse_topology("ring:8").W
    topo = parse_topology("ring:8")
    assert topo.beta == pytest.approx(4 / 3, rel=1e-6)
    assert theoretical_gamma(topo.spectral_gap, topo.beta, delta) == \
        pytest.approx(expected, rel=0.05)
    assert W.shape == (8, 8)


@pytest.mark.slow
def test_tuner_picks_one_for_exact_gossip_and_a_small_step_for_top1():
    W = parse_topology("ring:8").W
    assert tune_gamma(W, "identity", dim=200, steps=150)[0] == 1.0
    gamma, scores = tune_gamma(W, "topk:0.01", dim=400, steps=200)
    # the authors tuned 0.0375 for top-1% on this ring (epfml/powergossip)
    assert 0.01 <= gamma <= 0.1
    assert len(scores) == 13 and scores[1.0] > scores[gamma]


def test_tuner_split_over_ranks_agrees_with_one_process():
    from choco.comm import LocalNetwork

    W = parse_topology("ring:4").W
    whole = tune_gamma(W, "sign", dim=100, steps=60, grid=5)
    net = LocalNetwork([[1], [0]])  # two "ranks" splitting the grid
    parts = net.run(lambda comm: tune_gamma(
        W, "sign", dim=100, steps=60, grid=5,
        share=(comm.rank, comm.size, comm.allgather_object)))
    assert parts[0] == parts[1] == whole


@pytest.mark.parametrize("argv,needle", [
    (["--steps", "-1"], "--steps must be >= 1"),
    (["--dim", "0"], "--dim must be >= 1"),
    (["--grid", "100000"], "--grid must be at most 1000"),
    (["--dim", "100000", "--steps", "100000"], "--dim × --steps must be at most 1e9"),
    (["--seed", "-1"], "--seed must be in [0, 2^64)"),
    (["--topology", "ring:100000"], "n²·8"),
    (["--dim", "1000000", "--steps", "1"], "lower --dim to at most"),
    (["--compressor", "topk:0.01+naturel"], "unknown compressor 'naturel'"),
])
def test_cli_bad_inputs_are_one_paragraph(argv, needle, capsys, monkeypatch):
    from choco.run.tuning_cli import main

    monkeypatch.setenv("CHOCO_MEMORY_LIMIT", "1e8")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and needle in captured.err
    assert captured.err.count("\n") == 1 and "; " in captured.err

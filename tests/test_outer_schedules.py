"""The outer step over a time-varying graph (NoLoCo-like), and the refusals around it.

``ChocoSGD(..., outer=FACTORY)`` around the averagers of :mod:`choco.timevarying`: with the
identity compressor and γ = 1 (or exact gossip) on ``onepeer:4`` the nodes must equal a
numpy reference written here from the definitions: per-node inner SGD steps, the
pseudo-gradient θ − x, torch-style outer SGD with Nesterov momentum on the anchor, then one
round of the hypercube pairing ``i ↔ i XOR 2^(r mod 2)`` with weights ½, where ``r`` counts
the averaging rounds from 0. Resume mid-H and right after an outer step is bit-identical;
quasi-global momentum on a schedule equals its formula; gt/beer and the gossip benchmark
refuse schedules with one clear error each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from choco.compress import make_compressor
from choco.timevarying import make_choco_gossip, make_exact_gossip
from topologies import parse_topology
from topologies.schedule import RATE_ROUNDS

from . import outer_common as common
from .outer_common import LR, MU, grad, inner_steps, nesterov

D, BATCH = 5, 6


def node_data(n: int, steps: int, seed: int = 0):
    """Per node, one (X, y) batch per step; node i's optimum is shifted by 2i."""
    return common.node_data(n, steps, D, seed, BATCH)


def hypercube_round(x: list[np.ndarray], r: int) -> list[np.ndarray]:
    """One round of the one-peer hypercube: node i averages with i XOR 2^(r mod log₂ n)."""
    n = len(x)
    bit = 1 << (r % (n.bit_length() - 1))
    return [(x[i] + x[i ^ bit]) / 2 for i in range(n)]


def reference_noloco(w0, data, H, rounds, outer_lr, outer_mu, delayed=False):
    """Local steps + outer Nesterov SGD + one hypercube round per outer step, in numpy.

    Inner: torch SGD(lr, momentum, nesterov) per node, buffers kept across rounds. Outer:
    ``b ← μ b + Δ`` (``b = Δ`` the first time), ``θ ← θ − lr (Δ + μ b)``. ``delayed``: the
    round posted at outer step r is applied (to x and θ) at outer step r + 1 (overlap)."""
    n = len(data)
    x = [w0.copy() for _ in range(n)]
    anchor = [w0.copy() for _ in range(n)]
    m: list[Any] = [None] * n
    b: list[Any] = [None] * n
    pending = None
    for r in range(rounds):
        inner_steps(x, m, data, H, r)
        if pending is not None:
            x = [xi + p for xi, p in zip(x, pending, strict=True)]
            anchor = [a + p for a, p in zip(anchor, pending, strict=True)]
        for i in range(n):
            delta = anchor[i] - x[i]
            b[i] = delta.copy() if b[i] is None else outer_mu * b[i] + delta
            anchor[i] = anchor[i] - outer_lr * (delta + outer_mu * b[i])
            x[i] = anchor[i].copy()
        mixed = hypercube_round(x, r)
        if delayed:
            pending = [mx - xi for mx, xi in zip(mixed, x, strict=True)]
        else:
            x = mixed
            anchor = [v.copy() for v in mixed]
    if pending is not None:  # flush(): the last round's correction lands on x
        x = [xi + p for xi, p in zip(x, pending, strict=True)]
    return x


def averager(kind: str, comm, topo):
    if kind == "exact":
        return make_exact_gossip(comm, topo)
    gamma = {"identity": 1.0, "sign": 0.4, "topk:0.4": 0.3}[kind]
    return make_choco_gossip(comm, topo, make_compressor(kind), gamma, seed=5)


def library_run(spec, kind, w0, data, H, steps, outer, order="sync", momentum=MU,
                nesterov=True, momentum_mode="local", save_at=None, resume_from=None):
    """Every node of ``spec`` through ``steps`` local steps of ``ChocoSGD``; returns the
    final models, the final optimizer states and (with ``save_at``) the saved states."""
    topo = parse_topology(spec)
    assert topo.time_varying
    return common.run_nodes([topo.neighbors(i) for i in range(topo.n)],
                            lambda comm: averager(kind, comm, topo), w0, data, H, steps, outer,
                            order=order, momentum=momentum, use_nesterov=nesterov,
                            momentum_mode=momentum_mode, save_at=save_at,
                            resume_from=resume_from)


@pytest.mark.parametrize("kind", ["identity", "exact"])
@pytest.mark.parametrize("order", ["sync", "overlap"])
def test_outer_nesterov_on_onepeer_equals_the_numpy_reference(kind, order):
    n, H, rounds = 4, 3, 7  # 7 rounds: the pairing alternates, period 2
    data = node_data(n, H * rounds)
    w0 = np.random.default_rng(1).normal(size=D)
    expected = reference_noloco(w0, data, H, rounds, 0.7, 0.9, delayed=order == "overlap")
    xs, states, _ = library_run(f"onepeer:{n}", kind, w0, data, H, H * rounds, nesterov(),
                                order=order)
    for x, e in zip(xs, expected, strict=True):
        np.testing.assert_allclose(x.numpy(), e, rtol=0, atol=1e-10)
    # one pairing round is not an exact average: the nodes still differ, and the run moved
    assert np.linalg.norm(expected[0] - expected[3]) > 1e-2
    assert np.linalg.norm(expected[0] - w0) > 1.0
    # the round counter counts averaging rounds, not local steps
    gossip = states[0]["gossip"]
    assert gossip["round"] == rounds


def test_the_pairing_matters_a_fixed_pairing_gives_another_run():
    """The reference is sensitive to the round index: always pairing i ↔ i XOR 1 differs."""
    n, H, rounds = 4, 3, 4
    data = node_data(n, H * rounds, seed=6)
    w0 = np.zeros(D)
    xs, _, _ = library_run("onepeer:4", "identity", w0, data, H, H * rounds, nesterov())
    right = reference_noloco(w0, data, H, rounds, 0.7, 0.9)
    np.testing.assert_allclose(xs[0].numpy(), right[0], rtol=0, atol=1e-10)
    # the same computation with every round's pairing forced to bit 0
    global hypercube_round
    saved = hypercube_round
    try:
        hypercube_round = lambda x, r: saved(x, 0)  # noqa: E731
        wrong = reference_noloco(w0, data, H, rounds, 0.7, 0.9)
    finally:
        hypercube_round = saved
    assert np.linalg.norm(wrong[0] - right[0]) > 1e-3


@pytest.mark.parametrize("spec,kind", [("onepeer:4", "sign"), ("matching:6", "topk:0.4"),
                                       ("matching:5", "exact")])
@pytest.mark.parametrize("order", ["sync", "overlap"])
@pytest.mark.parametrize("save_at", [7, 8])  # H = 4: mid-H, and right after an outer step
def test_resume_mid_h_and_after_outer_step_on_a_schedule_is_bit_identical(spec, kind, order,
                                                                          save_at):
    n = int(spec.split(":")[1])
    H, steps = 4, 18
    data = node_data(n, steps, seed=4)
    w0 = np.zeros(D)
    outer = lambda p: torch.optim.Adam(p, lr=0.1)  # noqa: E731 - stateful outer optimizer
    straight, states, saved = library_run(spec, kind, w0, data, H, steps, outer, order=order,
                                          save_at=save_at)
    resumed, states2, _ = library_run(spec, kind, w0, data, H, steps, outer, order=order,
                                      resume_from=saved)
    for a, b, sa, sb in zip(straight, resumed, states, states2, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(sa["outer"]["anchor"], sb["outer"]["anchor"])
        assert sa["outer"]["optimizer"]["state"][0]["step"] == steps // H
        assert sa["gossip"]["round"] == sb["gossip"]["round"] == steps // H
    assert not torch.equal(straight[0], straight[1])


def qgm_reference(w0, data, steps, beta):
    """QG-DSGDm (arXiv:2102.04761, Alg. 1), heavy ball, with one exact hypercube round per
    step (sync order): m = β m̂ + g, x½ = x − η m, x⁺ = W_t x½, m̂ ← β m̂ + (1−β)(x − x⁺)/η."""
    n = len(data)
    x = [w0.copy() for _ in range(n)]
    m_hat = [np.zeros_like(w0) for _ in range(n)]
    for t in range(steps):
        half = [x[i] - LR * (beta * m_hat[i] + grad(x[i], *data[i][t])) for i in range(n)]
        new = hypercube_round(half, t)
        m_hat = [beta * m_hat[i] + (1 - beta) * (x[i] - new[i]) / LR for i in range(n)]
        x = new
    return x


def test_quasi_global_momentum_on_a_schedule_equals_its_formula():
    n, steps = 4, 12
    data = node_data(n, steps, seed=8)
    w0 = np.zeros(D)
    xs, _, _ = library_run("onepeer:4", "exact", w0, data, 1, steps, None, momentum=0.5,
                           nesterov=False, momentum_mode="quasi-global")
    expected = qgm_reference(w0, data, steps, 0.5)
    for x, e in zip(xs, expected, strict=True):
        np.testing.assert_allclose(x.numpy(), e, rtol=0, atol=1e-10)
    local, _, _ = library_run("onepeer:4", "exact", w0, data, 1, steps, None, momentum=0.5,
                              nesterov=False)
    assert np.linalg.norm(local[0].numpy() - expected[0]) > 1e-3  # the mode changes the run


# ---------------------------------------------------------------------------- choco-train
RUN = ["--backend", "local", "--seed", "7", "--checkpoint-every", "1", "--eval-local",
       "false", "--quiet"]


def _same_run(a: Path, b: Path, n: int) -> None:
    from .helpers import differences, rank_state, rows

    assert differences(torch.load(a / "model.pt"), torch.load(b / "model.pt")) == []
    for rank in range(n):
        sa, sb = rank_state(a, rank), rank_state(b, rank)
        assert differences(sa["model"], sb["model"]) == [], rank
        assert differences(sa["opt"], sb["opt"]) == [], rank
    assert rows(a) == rows(b)


@pytest.mark.parametrize("options", [
    ["--nodes", "8", "--topology", "matching:8", "--algorithm", "choco", "--compressor",
     "sign", "--gamma", "0.5", "--gossip-every", "5", "--outer",
     "nesterov:lr=0.7,momentum=0.9"],
    ["--nodes", "4", "--topology", "onepeer:4", "--algorithm", "exact", "--order", "sync",
     "--gossip-every", "8", "--outer", "sgd:lr=0.8,momentum=0.5", "--momentum-mode",
     "quasi-global"],
])
def test_choco_train_noloco_like_resume_mid_h_is_exact(tmp_path, options):
    """The checkpoint after epoch 2 falls mid-H (checked from config.json)."""
    from choco.run.checkpoint import find_latest
    from choco.train import main

    n, H = int(options[1]), int(options[options.index("--gossip-every") + 1])
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*RUN, *options, "--epochs", "3", "--out", str(a)]) == 0
    assert main([*RUN, *options, "--epochs", "2", "--out", str(b)]) == 0
    latest = find_latest(b)
    assert latest is not None and latest.epoch == 2
    assert main([*RUN, *options, "--epochs", "3", "--out", str(b), "--resume"]) == 0
    _same_run(a, b, n)
    info = json.loads((a / "config.json").read_text())
    steps = info["steps_per_epoch"]
    assert (2 * steps) % H != 0
    from .helpers import rank_state

    state = rank_state(a, 0)["opt"]
    # one round per outer step; in the overlap order the last one is still in flight
    in_flight = "pending_nbytes" in state["gossip"]
    assert in_flight == ("--order" not in options)
    assert state["gossip"]["round"] + in_flight == (3 * steps) // H
    assert "anchor" in state["outer"]


@pytest.mark.parametrize("algorithm", ["gt", "beer"])
@pytest.mark.parametrize("spec", ["onepeer:4", "ring:4+pga:2"])
def test_tracking_methods_refuse_schedules(tmp_path, capsys, algorithm, spec):
    from choco.train import main

    options = ["--algorithm", algorithm, "--topology", spec, "--nodes", "4", "--epochs", "1",
               "--out", str(tmp_path / "x")]
    if algorithm == "beer":
        options += ["--compressor", "sign", "--gamma", "0.4"]
    assert main(options) == 2
    err = capsys.readouterr().err
    assert f"--algorithm {algorithm}" in err and spec in err
    assert "static topology" in err
    assert not (tmp_path / "x").exists()


def _rate_by_hand(spec: str) -> tuple[float, int]:
    """‖Π_{t<P} W_t − 11ᵀ/n‖₂^{1/P}, with each W_t built from the round's pairs."""
    topo = parse_topology(spec)
    n = topo.n
    rounds = topo.period or RATE_ROUNDS
    P = np.eye(n)
    for t in range(rounds):
        W = np.eye(n)
        for i, j, w in topo.round_edges(t):
            W[i, j] = W[j, i] = w
            W[i, i] -= w
            W[j, j] -= w
        P = W @ P
    return float(np.linalg.norm(P - 1 / n, 2) ** (1 / rounds)), rounds


def test_config_json_names_the_schedule_rate_honestly(tmp_path):
    """``contraction_per_round`` is ‖Π_t W_t − 11ᵀ/n‖₂^{1/P} over P rounds, computed here
    from the round's pairs; matching has no period: P = RATE_ROUNDS. 6 nodes: ½-weights
    cannot average 6 values exactly, so the rate is strictly between 0 and 1."""
    from choco.train import main

    out = tmp_path / "r"
    assert main(["--backend", "local", "--nodes", "6", "--topology", "matching:6",
                 "--algorithm", "exact", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    info = json.loads((out / "config.json").read_text())
    rate, rounds = _rate_by_hand("matching:6")
    assert 0 < rate < 1
    assert info["contraction_per_round"] == pytest.approx(rate, rel=1e-9)
    assert info["spectral_gap"] == pytest.approx(1 - rate, rel=1e-9)  # kept as it was
    assert info["contraction_rounds"] == rounds


def test_rate_keys_static_graph_and_exact_schedule():
    from choco.run.schedule_view import rate_keys

    ring = parse_topology("ring:8")
    lam = np.sort(np.abs(np.linalg.eigvalsh(ring.W)))[::-1]
    assert rate_keys(ring) == pytest.approx({"contraction_per_round": lam[1],
                                             "contraction_rounds": 1}, rel=1e-9)
    # onepeer:8 averages exactly after log₂ 8 = 3 rounds
    assert _rate_by_hand("onepeer:8") == pytest.approx((0.0, 3), abs=1e-12)
    assert rate_keys(parse_topology("onepeer:8")) == {"contraction_per_round": 0.0,
                                                      "contraction_rounds": 3}


def test_gossip_benchmark_refuses_a_schedule_and_names_what_to_use(capsys):
    from choco.run.bench import main

    code = main(["gossip", "--topology", "onepeer:8", "--nodes", "8", "--numel", "1000",
                 "--rounds", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "onepeer:8" in err and "choco-consensus" in err and "static" in err

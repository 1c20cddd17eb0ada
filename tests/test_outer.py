"""The outer step of ``ChocoSGD(..., outer=FACTORY)`` against a hand-written DiLoCo.

Every node fits its own least-squares problem (a linear model in float64), so nodes pull in
different directions. With an exact average (identity, γ = 1 on a complete graph) the nodes'
models must equal a plain numpy DiLoCo: one global anchor, H inner steps of Nesterov SGD per
node on its own data (inner momentum kept across rounds), the mean pseudo-gradient, and an
outer step written with torch's SGD formulas. ``SGD(lr=1)`` without momentum must reduce to
plain local steps + averaging. Resume mid-H and right after an outer step is bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from choco.baselines import ExactGossip
from choco.comm import LocalNetwork
from choco.compress import make_compressor
from choco.errors import GossipError, UsageError
from choco.gossip import ChocoGossip
from choco.optim import ChocoSGD
from choco.run.algorithms import parse_outer
from topologies import parse_topology

from . import outer_common as common
from .outer_common import Linear, inner_steps, nesterov

D, BATCH = 6, 8


def node_data(n: int, steps: int, seed: int = 0):
    """Per node, one (X, y) batch per step; each node has its own optimum."""
    return common.node_data(n, steps, D, seed, BATCH)


def reference_diloco(w0, data, H, rounds, outer_lr, outer_mu, nesterov, delayed=False):
    """DiLoCo in numpy: per-node models, torch-style SGD formulas for inner and outer steps.

    ``delayed``: the averaging round posted after an outer step is applied one outer step
    later, to both the model and the anchor (the ``overlap`` order)."""
    n = len(data)
    x = [w0.copy() for _ in range(n)]
    anchor = [w0.copy() for _ in range(n)]
    m = [None] * n  # inner momentum buffers
    b = [None] * n  # outer momentum buffers
    pending = None
    for r in range(rounds):
        inner_steps(x, m, data, H, r)
        if pending is not None:
            for i in range(n):
                x[i] = x[i] + pending[i]
                anchor[i] = anchor[i] + pending[i]
        for i in range(n):
            delta = anchor[i] - x[i]
            if outer_mu:
                b[i] = delta.copy() if b[i] is None else outer_mu * b[i] + delta
                step = delta + outer_mu * b[i] if nesterov else b[i]
            else:
                step = delta
            anchor[i] = anchor[i] - outer_lr * step
            x[i] = anchor[i].copy()
        mean = sum(x) / n
        if delayed:
            pending = [mean - xi for xi in x]
        else:
            x = [mean.copy() for _ in range(n)]
            anchor = [mean.copy() for _ in range(n)]
    return x


def make_averager(kind: str, comm, row, seed: int = 0):
    if kind == "exact":
        return ExactGossip(comm, row)
    if kind == "identity":
        return ChocoGossip(comm, row, make_compressor("identity"), 1.0, seed)
    return ChocoGossip(comm, row, make_compressor(kind), 0.4, seed)


def library_run(topology, averager, w0, data, H, steps, outer, order="sync",
                momentum_mode="local", save_at=None, resume_from=None):
    """Run every node through ``steps`` local steps; returns final x per node, the final
    optimizer states and, if ``save_at``, the serialized state after that many steps."""
    topo = parse_topology(topology, "metropolis")
    return common.run_nodes([topo.neighbors(i) for i in range(topo.n)],
                            lambda comm: make_averager(averager, comm, topo.W[comm.rank], seed=5),
                            w0, data, H, steps, outer, order=order,
                            momentum_mode=momentum_mode, save_at=save_at,
                            resume_from=resume_from)


@pytest.mark.parametrize("averager", ["exact", "identity"])
@pytest.mark.parametrize("outer_mu,use_nesterov", [(0.9, True), (0.5, False), (0.0, False)])
def test_exact_average_with_outer_sgd_is_diloco(averager, outer_mu, use_nesterov):
    n, H, rounds = 4, 5, 6
    data = node_data(n, H * rounds)
    w0 = np.random.default_rng(1).normal(size=D)
    expected = reference_diloco(w0, data, H, rounds, 0.7, outer_mu, use_nesterov)

    def outer(p):
        return torch.optim.SGD(p, lr=0.7, momentum=outer_mu, nesterov=use_nesterov)

    xs, _, _ = library_run(f"complete:{n}", averager, w0, data, H, H * rounds, outer)
    for x in xs:
        np.testing.assert_allclose(x.numpy(), expected[0], rtol=0, atol=1e-10)
    # the run moved far from the start and the nodes' local optima differ: not trivial
    assert np.linalg.norm(expected[0] - w0) > 1.0


def test_overlap_order_applies_the_round_one_outer_step_late():
    n, H, rounds = 4, 3, 5
    data = node_data(n, H * rounds, seed=2)
    w0 = np.zeros(D)
    expected = reference_diloco(w0, data, H, rounds, 0.7, 0.9, True, delayed=True)
    xs, _, _ = library_run(f"complete:{n}", "exact", w0, data, H, H * rounds, nesterov(),
                           order="overlap")
    # after flush(), the last round's correction is applied to x as well
    mean = sum(expected) / n
    for x in xs:
        np.testing.assert_allclose(x.numpy(), mean, rtol=0, atol=1e-10)
    sync = reference_diloco(w0, data, H, rounds, 0.7, 0.9, True)
    assert np.linalg.norm(sync[0] - mean) > 1e-3  # the delay changes the iterates


@pytest.mark.parametrize("topology", ["ring:5", "complete:4"])
def test_outer_sgd_lr1_without_momentum_is_plain_local_steps(topology):
    n = int(topology.split(":")[1])
    H, steps = 4, 20
    data = node_data(n, steps, seed=3)
    w0 = np.ones(D)
    with_outer, _, _ = library_run(topology, "exact", w0, data, H, steps,
                                   lambda p: torch.optim.SGD(p, lr=1.0))
    plain, _, _ = library_run(topology, "exact", w0, data, H, steps, None)
    for a, b in zip(with_outer, plain, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    # a ring round does not average exactly, a complete graph's does
    assert torch.allclose(plain[0], plain[1]) == topology.startswith("complete")


@pytest.mark.parametrize("order", ["overlap", "sync"])
@pytest.mark.parametrize("save_at", [6, 8])  # H = 4: mid-H, and right after an outer step
def test_resume_mid_h_and_after_outer_step_is_bit_identical(order, save_at):
    n, H, steps = 4, 4, 14
    data = node_data(n, steps, seed=4)
    w0 = np.zeros(D)
    outer = lambda p: torch.optim.Adam(p, lr=0.1)  # noqa: E731 - stateful outer optimizer
    straight, states, saved = library_run("ring:4", "sign", w0, data, H, steps, outer,
                                          order=order, momentum_mode="quasi-global",
                                          save_at=save_at)
    resumed, states2, _ = library_run("ring:4", "sign", w0, data, H, steps, outer,
                                      order=order, momentum_mode="quasi-global",
                                      resume_from=saved)
    for a, b, sa, sb in zip(straight, resumed, states, states2, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(sa["outer"]["anchor"], sb["outer"]["anchor"])
        assert torch.equal(sa["qgm"]["buffer"], sb["qgm"]["buffer"])
        assert sa["outer"]["optimizer"]["state"][0]["step"] == steps // H
    assert not torch.equal(straight[0], straight[1])


def test_outer_state_is_refused_by_an_optimizer_without_outer():
    topo = parse_topology("ring:3", "metropolis")
    net = LocalNetwork([topo.neighbors(i) for i in range(3)])

    def node(comm):
        a = ChocoSGD(torch.optim.SGD(Linear(np.zeros(D)).parameters(), lr=0.1),
                     ExactGossip(comm, topo.W[comm.rank]), outer=nesterov())
        b = ChocoSGD(torch.optim.SGD(Linear(np.zeros(D)).parameters(), lr=0.1),
                     ExactGossip(comm, topo.W[comm.rank]))
        with pytest.raises(GossipError, match="outer"):
            b.load_state_dict(a.state_dict())
        return True

    assert all(net.run(node))


@pytest.mark.parametrize("spec,kind,options", [
    ("nesterov:lr=0.7,momentum=0.9", torch.optim.SGD, {"lr": 0.7, "momentum": 0.9,
                                                       "nesterov": True}),
    ("sgd:lr=1", torch.optim.SGD, {"lr": 1.0, "momentum": 0.0, "nesterov": False}),
    ("adam:lr=0.01,beta2=0.95", torch.optim.Adam, {"lr": 0.01, "betas": (0.9, 0.95)}),
])
def test_outer_specs_build_the_named_torch_optimizer(spec, kind, options):
    opt = parse_outer(spec)([torch.zeros(3)])
    assert type(opt) is kind
    for key, value in options.items():
        assert opt.param_groups[0][key] == value


@pytest.mark.parametrize("spec,words", [("nadam:lr=1", "must start with"),
                                        ("sgd:momentum=0.9", "lr > 0"),
                                        ("sgd:lr=1,foo=2", "options are"),
                                        ("sgd:lr=x", "must be a number"),
                                        ("sgd:lr=1,momentum=-1", "momentum")])
def test_bad_outer_specs_say_what_is_wrong(spec, words):
    with pytest.raises(UsageError, match=words):
        parse_outer(spec)


# ---------------------------------------------------------------------------- choco-train
ALGO_OPTIONS = ["--topology", "ring:4", "--epochs", "2", "--seed", "3",
                "--checkpoint-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> dict[str, Path]:
    """The cases of tests/mpi/algos_equiv_check.py, in process."""
    from choco.train import main

    from .mpi.algos_equiv_check import CASES

    root = tmp_path_factory.mktemp("algos_local")
    for name, options in CASES:
        assert main([*ALGO_OPTIONS, *options, "--backend", "local", "--nodes", "4",
                     "--out", str(root / name)]) == 0
    return {name: root / name for name, _ in CASES}


def _same_run(a: Path, b: Path) -> None:
    from .helpers import differences, rank_state, rows

    assert differences(torch.load(a / "model.pt"), torch.load(b / "model.pt")) == []
    for rank in range(4):
        sa, sb = rank_state(a, rank), rank_state(b, rank)
        assert differences(sa["model"], sb["model"]) == [], rank
        assert differences(sa["opt"], sb["opt"]) == [], rank
    assert rows(a) == rows(b)


@pytest.mark.mpi
def test_new_algorithms_under_mpiexec_equal_in_process(local_runs, tmp_path):
    from .helpers import TESTS, run_mpi

    proc = run_mpi(4, [str(TESTS / "mpi" / "algos_equiv_check.py"), str(tmp_path),
                       *ALGO_OPTIONS], timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, local in local_runs.items():
        _same_run(local, tmp_path / name)
    state = torch.load(next((local_runs["outer"] / "checkpoint").glob("epoch-*"))
                       / "rank1.pt", weights_only=True)
    assert {"outer", "gossip"} <= state["opt"].keys()  # the anchor is checkpointed


@pytest.mark.torchrun
def test_new_algorithms_under_torchrun_equal_in_process(local_runs, tmp_path):
    from .helpers import TESTS, run_torchrun

    proc = run_torchrun(4, [str(TESTS / "torchrun" / "algos_check.py"), str(tmp_path),
                            *ALGO_OPTIONS], timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, local in local_runs.items():
        _same_run(local, tmp_path / name)


@pytest.mark.parametrize("options", [
    ["--algorithm", "choco", "--compressor", "sign", "--gamma", "0.5", "--gossip-every", "8",
     "--outer", "nesterov:lr=0.7,momentum=0.9"],
    ["--algorithm", "beer", "--compressor", "sign", "--gamma", "0.4",
     "--momentum-mode", "quasi-global"],
])
def test_choco_train_resume_is_exact_with_outer_step_and_beer(tmp_path, options):
    """22 steps per epoch with H = 8: the checkpoint after epoch 2 falls mid-H."""
    from choco.run.checkpoint import find_latest
    from choco.train import main

    a, b = tmp_path / "a", tmp_path / "b"
    run = ["--backend", "local", "--nodes", "4", "--topology", "ring:4", "--seed", "7",
           "--checkpoint-every", "1", "--eval-local", "false", "--quiet", *options]
    assert main([*run, "--epochs", "3", "--out", str(a)]) == 0
    assert main([*run, "--epochs", "2", "--out", str(b)]) == 0
    assert find_latest(b).epoch == 2
    assert main([*run, "--epochs", "3", "--out", str(b), "--resume"]) == 0
    _same_run(a, b)
    steps = json.loads((a / "config.json").read_text())["steps_per_epoch"]
    assert (2 * steps) % 8 != 0


@pytest.mark.parametrize("options,words", [
    (["--algorithm", "allreduce", "--outer", "sgd:lr=1"], "complete graph"),
    (["--algorithm", "gt", "--gossip-every", "4"], "--gossip-every 1"),
    (["--algorithm", "choco", "--momentum-mode", "global"], "local or quasi-global"),
    (["--algorithm", "choco", "--momentum-mode", "quasi-global", "--momentum", "0"],
     "--momentum > 0"),
    (["--algorithm", "choco", "--outer", "lion:lr=1"], "--outer must start"),
])
def test_choco_train_refuses_bad_combinations(tmp_path, capsys, options, words):
    from choco.train import main

    assert main([*options, "--out", str(tmp_path / "x"), "--epochs", "1"]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

"""Tests of the ``topologies`` package: graph invariants, mixing matrices, specs, CLI.

Expected spectral gaps are independent numbers (closed forms or CHOCO-SGD's Table 2,
arXiv:1907.09356), not values recomputed by the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import topologies
from topologies import (
    SpectralGapWarning,
    Topology,
    TopologyError,
    beta,
    check_mixing_matrix,
    complete,
    erdos_renyi,
    exponential,
    from_file,
    mixing_matrix,
    parse_topology,
    ring,
    social,
    spectral_gap,
    star,
    torus,
)

REPO = Path(__file__).resolve().parents[1]


def assert_valid_mixing(W: np.ndarray) -> None:
    """Symmetric, non-negative, doubly stochastic (checked directly, not via the package)."""
    assert W.dtype == np.float64
    np.testing.assert_allclose(W, W.T, atol=1e-12)
    assert W.min() >= 0.0
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)


# --- graphs -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 8, 17])
def test_ring_is_cycle(n: int) -> None:
    G = ring(n)
    assert list(G) == list(range(n))
    assert nx.is_isomorphic(G, nx.cycle_graph(n))


def test_small_rings_defined() -> None:
    one, two = ring(1), ring(2)
    assert list(one) == [0] and one.number_of_edges() == 0
    assert sorted(two.edges) == [(0, 1)]
    np.testing.assert_array_equal(mixing_matrix(one), [[1.0]])
    np.testing.assert_allclose(mixing_matrix(two), [[0.5, 0.5], [0.5, 0.5]])
    assert spectral_gap(mixing_matrix(one)) == 1.0
    assert parse_topology("ring:1").n == 1


@pytest.mark.parametrize(
    ("r", "c", "degree"), [(2, 4, 3), (2, 2, 2), (3, 3, 4), (4, 4, 4), (3, 5, 4)]
)
def test_torus_degrees_and_matrix(r: int, c: int, degree: int) -> None:
    G = torus(r, c)
    assert list(G) == list(range(r * c))
    assert {d for _, d in G.degree} == {degree}
    assert G.number_of_edges() == r * c * degree // 2
    W = mixing_matrix(G)
    assert_valid_mixing(W)
    off = W[~np.eye(r * c, dtype=bool)]
    np.testing.assert_allclose(off[off > 0], 1.0 / (degree + 1))


@pytest.mark.parametrize(("r", "c"), [(2, 4), (3, 3), (3, 5), (4, 6)])
def test_torus_numbering_row_major(r: int, c: int) -> None:
    grid = nx.grid_2d_graph(r, c, periodic=True)
    rank = {node: k for k, node in enumerate(sorted(grid))}
    assert all(rank[(i, j)] == i * c + j for i in range(r) for j in range(c))
    expected = {tuple(sorted((rank[u], rank[v]))) for u, v in grid.edges}
    assert set(torus(r, c).edges) == expected


def test_torus_from_count() -> None:
    assert nx.is_isomorphic(torus(16), torus(4, 4))
    assert set(torus(8).edges) == set(torus(2, 4).edges)
    assert set(torus(12).edges) == set(torus(3, 4).edges)


@pytest.mark.parametrize("spec", ["torus:5", "torus:1x4", "torus:7x1", "torus:1"])
def test_torus_side_one_suggests_ring(spec: str) -> None:
    with pytest.raises(TopologyError, match="ring"):
        parse_topology(spec)


def test_social_graph() -> None:
    G = social()
    assert G.number_of_nodes() == 32 and G.number_of_edges() == 89
    assert nx.is_bipartite(G)
    degrees = [d for _, d in G.degree]
    assert min(degrees) == 2 and max(degrees) == 14
    assert G.nodes[0]["label"] == "Evelyn Jefferson" and G.nodes[18]["label"] == "E1"
    women = set(range(18))
    assert all((u in women) != (v in women) for u, v in G.edges)


def test_complete_star_exponential() -> None:
    assert nx.is_isomorphic(complete(6), nx.complete_graph(6))
    assert nx.is_isomorphic(star(6), nx.star_graph(5))
    assert sorted(star(6).neighbors(0)) == [1, 2, 3, 4, 5]
    assert sorted(exponential(16).neighbors(0)) == [1, 2, 4, 8, 12, 14, 15]
    assert sorted(exponential(5).neighbors(0)) == [1, 2, 3, 4]
    assert exponential(2).number_of_edges() == 1


def test_erdos_renyi_connected_and_seeded() -> None:
    G = erdos_renyi(32, 0.3, seed=1)
    assert nx.is_connected(G) and list(G) == list(range(32))
    assert set(G.edges) == set(erdos_renyi(32, 0.3, seed=1).edges)
    assert set(parse_topology("er:32:0.3:seed=1").edges) == set(G.edges)


def test_erdos_renyi_disconnected_raises() -> None:
    with pytest.raises(TopologyError, match=r"larger p.*another seed"):
        erdos_renyi(40, 0.01, seed=0)
    with pytest.raises(TopologyError, match="not reachable"):
        parse_topology("er:40:0.01")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4", True])
def test_builders_reject_bad_sizes(bad: object) -> None:
    for builder in (ring, complete, star, exponential, torus):
        with pytest.raises(TopologyError, match="positive integer"):
            builder(bad)  # type: ignore[arg-type]


# --- mixing matrices and spectral gaps ---------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "rho"),
    [
        ("ring:4", 0.667),
        ("ring:8", 0.195),
        ("ring:16", 0.051),
        ("ring:32", 0.013),
        ("torus:3x3", 0.6),
        ("torus:4x4", 0.4),
        ("torus:6x6", 0.2),
        ("torus:8", 0.5),
        ("torus:2x2", 0.667),
        ("complete:8", 1.0),
        ("social", 0.082),
    ],
)
def test_spectral_gaps(spec: str, rho: float) -> None:
    topo = parse_topology(spec)
    assert topo.spectral_gap == pytest.approx(rho, abs=1e-3)
    assert spectral_gap(topo.W) == pytest.approx(rho, abs=1e-3)


def test_ring_gap_closed_form() -> None:
    for n in (5, 8, 12):
        expected = 1 - (1 + 2 * np.cos(2 * np.pi / n)) / 3
        assert spectral_gap(mixing_matrix(ring(n))) == pytest.approx(expected, abs=1e-12)
    assert beta(mixing_matrix(ring(8))) == pytest.approx(4 / 3, abs=1e-12)


def test_metropolis_entries_on_regular_graphs() -> None:
    W_ring = mixing_matrix(ring(8))
    np.testing.assert_allclose(W_ring[W_ring > 0], 1 / 3)
    assert np.count_nonzero(W_ring) == 3 * 8
    W_torus = mixing_matrix(torus(4, 4))
    np.testing.assert_allclose(W_torus[W_torus > 0], 1 / 5)
    assert np.count_nonzero(W_torus) == 5 * 16
    np.testing.assert_allclose(mixing_matrix(complete(4)), np.full((4, 4), 0.25))
    np.testing.assert_allclose(mixing_matrix(ring(8), "uniform"), W_ring)


def test_social_maxdegree() -> None:
    topo = parse_topology("social", mixing="maxdegree")
    assert topo.mixing == "maxdegree"
    assert_valid_mixing(topo.W)
    assert int(np.sum(np.diag(topo.W) == 0.0)) == 5
    assert topo.spectral_gap == pytest.approx(0.090, abs=1e-3)
    assert topo.beta == pytest.approx(1.608, abs=1e-3)


def test_metropolis_social_valid() -> None:
    W = mixing_matrix(social())
    assert_valid_mixing(W)
    for i, j in social().edges:
        assert W[i, j] > 0


def test_maxdegree_even_ring_warns_not_raises() -> None:
    with pytest.warns(SpectralGapWarning, match="spectral gap 0"):
        topo = parse_topology("ring:8", mixing="maxdegree")
    assert topo.spectral_gap == 0.0
    assert beta(topo.W) == pytest.approx(2.0)


def test_uniform_rejects_irregular() -> None:
    with pytest.raises(TopologyError, match="regular"):
        mixing_matrix(star(5), "uniform")
    with pytest.raises(TopologyError, match="metropolis"):
        parse_topology("star:5", mixing="uniform")


def test_unknown_rule_lists_valid() -> None:
    with pytest.raises(TopologyError, match="metropolis, maxdegree, uniform"):
        mixing_matrix(ring(4), "bogus")


def test_mixing_requires_rank_labels() -> None:
    with pytest.raises(TopologyError, match="convert_node_labels_to_integers"):
        mixing_matrix(nx.grid_2d_graph(3, 3, periodic=True))


# --- check_mixing_matrix -----------------------------------------------------------------


def test_check_accepts_valid_and_returns_float64() -> None:
    checked = check_mixing_matrix([[0.5, 0.5], [0.5, 0.5]])
    assert checked.dtype == np.float64
    check_mixing_matrix(np.array([[1.0]]))


def test_check_not_square() -> None:
    with pytest.raises(TopologyError, match=r"square.*\(2, 3\)"):
        check_mixing_matrix(np.ones((2, 3)) / 3)


def test_check_asymmetric_names_entry() -> None:
    W = mixing_matrix(ring(5))
    W[1, 2] += 0.1
    W[1, 1] -= 0.1
    with pytest.raises(TopologyError, match=r"symmetric.*W\[1,2\]"):
        check_mixing_matrix(W)


def test_check_negative_names_entry() -> None:
    W = mixing_matrix(ring(5))
    W[2, 3] = W[3, 2] = -0.1
    W[2, 2] = W[3, 3] = 1 - 1 / 3 + 0.1
    with pytest.raises(TopologyError, match=r"non-negative.*W\[2,3\]"):
        check_mixing_matrix(W)


def test_check_not_stochastic_names_row() -> None:
    W = mixing_matrix(ring(6))
    W[4, 4] = 0.2
    with pytest.raises(TopologyError, match=r"row 4 sums to"):
        check_mixing_matrix(W)


def test_check_disconnected_names_node() -> None:
    W = np.zeros((4, 4))
    W[:2, :2] = 0.5
    W[2:, 2:] = 0.5
    with pytest.raises(TopologyError, match=r"connected.*node 2 is not reachable"):
        check_mixing_matrix(W)
    with pytest.raises(TopologyError, match="node 1"):
        check_mixing_matrix(np.eye(2))


def test_topology_is_frozen_and_consistent() -> None:
    topo = parse_topology("torus:3x4")
    assert topo.n == 12 and topo.degrees == [4] * 12
    assert topo.edges == sorted(topo.edges) and all(i < j for i, j in topo.edges)
    assert topo.neighbors(0) == [1, 3, 4, 8]
    np.testing.assert_allclose(topo.row(0)[[0, 1, 3, 4, 8]], 0.2)
    with pytest.raises(ValueError):
        topo.W[0, 0] = 1.0
    with pytest.raises(TopologyError, match=r"\[0, 12\)"):
        topo.row(12)
    with pytest.raises(TopologyError, match="exactly on the graph's edges"):
        Topology("bad", ring(4), np.full((4, 4), 0.25), "custom")


# --- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hypercube:8", "ring:N, torus:RxC"),
        ("ring:0", "positive integer"),
        ("ring:x", "positive integer"),
        ("ring", "ring:N"),
        ("ring:4:5", "ring:N"),
        ("social:3", "no arguments"),
        ("er:16:0", r"\(0, 1\]"),
        ("er:16:1.5", r"\(0, 1\]"),
        ("er:16:abc", r"\(0, 1\]"),
        ("er:16:0.5:3", "seed=S"),
        ("file:", "empty path"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_topology(spec)


def test_edge_list_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "edges.txt"
    edges = [f"{i} {j}" for i, j in ring(6).edges]
    lines = ["# a ring of 6 plus one chord", *edges, "0 3  # chord"]
    path.write_text("\n".join(lines) + "\n\n")
    G = from_file(path)
    assert set(G.edges) == {*ring(6).edges, (0, 3)}
    topo = parse_topology(f"file:{path}")
    assert topo.n == 6 and len(topo.edges) == 7 and topo.mixing == "metropolis"
    assert_valid_mixing(topo.W)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 1\n1 x\n", "line 2"),
        ("0 1 0.5\n", "line 1"),
        ("0 0\n", "self-loop"),
        ("0 1\n1 3\n", "node 2 never appears"),
        ("0 1\n2 3\n", "node 2 is not reachable"),
        ("# nothing\n", "at least one node"),
    ],
)
def test_edge_list_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "edges.txt"
    path.write_text(text)
    with pytest.raises(TopologyError, match=message):
        from_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="readable"):
        parse_topology(f"file:{tmp_path / 'nope.txt'}")


def test_npy_round_trip(tmp_path: Path) -> None:
    original = parse_topology("social", mixing="maxdegree")
    path = tmp_path / "W.npy"
    np.save(path, original.W)
    loaded = parse_topology(f"file:{path}")
    assert loaded.mixing == "file"
    np.testing.assert_array_equal(loaded.W, original.W)
    assert loaded.edges == original.edges
    assert set(from_file(path).edges) == set(original.edges)


def test_npy_invalid_rejected(tmp_path: Path) -> None:
    path = tmp_path / "W.npy"
    W = mixing_matrix(ring(4))
    W[0, 0] = 0.9
    np.save(path, W)
    with pytest.raises(TopologyError, match="row 0"):
        parse_topology(f"file:{path}")


def test_public_api_is_torch_free() -> None:
    assert set(topologies.__all__) >= {"parse_topology", "check_mixing_matrix", "torus"}
    code = "import sys, topologies; print('torch' in sys.modules, 'mpi4py' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


# --- CLI ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "topologies", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_json(tmp_path: Path) -> None:
    save = tmp_path / "W.npy"
    result = run_cli("ring:8", "--json", "--save", str(save))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    keys = {"n", "edges", "mixing", "spectral_gap", "beta", "degrees", "W", "spec"}
    assert keys <= set(record)
    assert record["n"] == 8 and len(record["edges"]) == 8
    assert all(i < j for i, j in record["edges"])
    assert record["spectral_gap"] == pytest.approx(0.195, abs=1e-3)
    np.testing.assert_allclose(np.load(save), np.array(record["W"]))


def test_cli_summary() -> None:
    result = run_cli("torus:4x4", "--mixing", "metropolis")
    assert result.returncode == 0, result.stderr
    assert "spectral gap  0.4" in result.stdout and "nodes         16" in result.stdout


def test_cli_bad_spec_writes_nothing(tmp_path: Path) -> None:
    save = tmp_path / "W.npy"
    result = run_cli("torus:7", "--json", "--save", str(save))
    assert result.returncode == 2
    assert "ring" in result.stderr and result.stdout == ""
    assert not save.exists()


def test_cli_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from topologies.__main__ import main

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["complete:4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["spectral_gap"] == pytest.approx(1.0)
    assert main(["nonsense"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "must be one of" in captured.err


# --- sizes refused before allocation, outputs that destroy nothing ------------------------


@pytest.mark.parametrize("spec", ["ring:1000000000", "torus:100000x100000", "complete:100000",
                                  "star:10000000", "exponential:1000000", "er:100000:0.5",
                                  "torus:1000000000000000000"])
def test_huge_specs_are_refused_before_anything_is_built(spec: str) -> None:
    """The estimate (n²·8 bytes of W, several copies, networkx's graphs) against the limit."""
    with pytest.raises(TopologyError, match=r"must fit in the memory limit .* n²·8 = "
                       r".*use at most n = [0-9,]+ nodes"):
        parse_topology(spec)


def test_builders_refuse_graphs_beyond_the_memory_limit() -> None:
    for build, arg in [(ring, 10**12), (complete, 10**6), (star, 10**12), (torus, 10**18),
                       (exponential, 10**11)]:
        with pytest.raises(TopologyError, match="must fit in the memory limit"):
            build(arg)
    with pytest.raises(TopologyError, match="must fit in the memory limit"):
        erdos_renyi(10**7, 0.5)


def test_the_memory_limit_comes_from_the_environment_or_the_machine(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from topologies.memory import MEMORY_ENV, memory_limit

    monkeypatch.delenv(MEMORY_ENV, raising=False)
    limit, source = memory_limit()
    assert limit > 0 and ("1/4 of" in source or "fixed cap" in source)
    monkeypatch.setenv(MEMORY_ENV, "1e6")
    assert memory_limit() == (1_000_000, f"set by {MEMORY_ENV}")
    with pytest.raises(TopologyError, match="must fit in the memory limit of 1,000,000 bytes"):
        parse_topology("ring:400")  # 6 × 400² × 8 bytes
    assert parse_topology("ring:8").n == 8
    path = tmp_path / "W.npy"
    np.save(path, parse_topology("ring:8").W)
    monkeypatch.setenv(MEMORY_ENV, "1000")  # a saved W is checked from its header
    with pytest.raises(TopologyError, match=f"mixing-matrix file '{path}' must fit"):
        parse_topology(f"file:{path}")
    monkeypatch.setenv(MEMORY_ENV, "lots")
    from choco.errors import UsageError

    with pytest.raises(UsageError, match=f"{MEMORY_ENV} must be a positive number of bytes"):
        memory_limit()


def test_edge_list_with_a_huge_node_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edges.txt"
    path.write_text("0 1\n1 99999999999\n")
    with pytest.raises(TopologyError, match="n = 100,000,000,000 nodes"):
        from_file(path)


def test_npz_under_a_npy_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "W.npy"
    with open(path, "wb") as fh:
        np.savez(fh, W=np.eye(2))
    with pytest.raises(TopologyError, match=r"\.npz archive"):
        parse_topology(f"file:{path}")


def test_cli_save_refuses_existing_files_and_inputs(tmp_path: Path, monkeypatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from topologies.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["ring:8", "--save", "W.npy"]) == 0
    saved = (tmp_path / "W.npy").read_bytes()
    mode = (tmp_path / "W.npy").stat().st_mode & 0o777
    umask = os.umask(0o22)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # a normal new file, not the 0600 of a temporary file
    capsys.readouterr()
    for argv, needle in [(["ring:4", "--save", "W.npy"], "pass --overwrite"),
                         (["file:W.npy", "--save", "W.npy", "--overwrite"], "destroy the input"),
                         (["ring:4", "--save", str(tmp_path)], "which is a folder"),
                         (["ring:4", "--save", "W.npy/x.npy"], "is a file, not a folder"),
                         (["ring:4", "--save", "no/such/W.npy"], "does not exist")]:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: --save must"), argv
        assert needle in captured.err and captured.err.count("\n") == 1, captured.err
    assert (tmp_path / "W.npy").read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["W.npy"]  # no temporary left
    assert main(["ring:4", "--save", "W.npy", "--overwrite"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "W.npy"), parse_topology("ring:4").W)


def test_cli_errors_are_one_paragraph(capsys: pytest.CaptureFixture[str]) -> None:
    from topologies.__main__ import main

    for argv, needle in [(["ring:8", "--mixing", "foo"], "--mixing must be one of"),
                         (["ring:8", "--bogus"], "'--bogus'"), ([], "spec is required"),
                         (["ring:8", "--save"], "--save takes one argument")]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
        assert "usage:" not in err


def test_argparse_messages_are_rewritten() -> None:
    from choco.run.cli import ArgumentParser

    parser = ArgumentParser(prog="prog")
    parser.add_argument("--dim", type=int, default=1000)
    assert parser.explain("argument --dim: invalid int value: 'abc'") == (
        "--dim must be an integer, got 'abc'; write e.g. --dim 1000 (prog --help lists every "
        "option)")
    assert parser.explain("something new").startswith("the command line must follow")

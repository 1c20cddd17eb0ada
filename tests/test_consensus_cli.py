"""``python -m choco.consensus``: outputs against formulas, and every bad input refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from choco.consensus import main
from topologies import parse_topology

from .helpers import run_python


@pytest.fixture
def x0_file(tmp_path):
    path = tmp_path / "X0.npy"
    np.save(path, np.random.default_rng(1).standard_normal((8, 40)))
    return path


def args(x0, out, **over):
    base = {"--topology": "ring:8", "--compressor": "identity", "--gamma": "1",
            "--steps": "5", "--init": str(x0), "--out": str(out)}
    base.update(over)
    return [tok for kv in base.items() for tok in kv] + ["--quiet"]


def test_identity_run_matches_matrix_powers(x0_file, tmp_path):
    out = tmp_path / "o.npz"
    assert main(args(x0_file, out)) == 0
    res = np.load(out)
    W = parse_topology("ring:8").W
    X0 = np.load(x0_file)
    assert np.abs(res["x"] - np.linalg.matrix_power(W, 5) @ X0).max() < 1e-12
    xbar = X0.mean(0)
    expected = [np.mean(((np.linalg.matrix_power(W, t) @ X0 - xbar) ** 2).sum(1))
                for t in range(6)]
    assert np.allclose(res["error"], expected, rtol=1e-10)
    # identity sends d float64 values + 16-byte header to each of 2 neighbours, 5 rounds
    assert res["bytes_sent"].tolist() == [5 * 2 * (16 + 8 * 40)] * 8


def test_cli_subprocess_prints_progress_and_json_last(tmp_path):
    out = tmp_path / "o.npz"
    np.save(tmp_path / "X32.npy", np.random.default_rng(2).standard_normal((32, 7)))
    proc = run_python(["-m", "choco.consensus", "--topology", "social", "--mixing",
                       "maxdegree", "--compressor", "sign", "--gamma", "0.3", "--steps", "20",
                       "--init", str(tmp_path / "X32.npy"), "--out", str(out), "--json"],
                      timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("step") for line in lines[:-1])
    summary = json.loads(lines[-1])
    assert summary["compressor"] == "sign" and summary["steps"] == 20
    res = np.load(out)
    assert res["x"].shape == (32, 7) and res["error"].shape == (21,)
    assert summary["reduction"] == pytest.approx(res["error"][0] / res["error"][-1])


@pytest.mark.parametrize("over,needle", [
    ({"--topology": "rung:8"}, "ring"),
    ({"--topology": "ring:0"}, "ring"),
    ({"--topology": "er:8:0.01"}, "connected"),
    ({"--compressor": "topq:0.1"}, "valid specs"),
    ({"--compressor": "topk:2"}, "(0, 1]"),
    ({"--gamma": "0"}, "(0, 1]"),
    ({"--gamma": "1.5"}, "(0, 1]"),
    ({"--steps": "-1"}, ">= 0"),
    ({"--topology": "ring:4"}, "one row per node"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(x0_file, tmp_path, capsys,
                                                             over, needle):
    out = tmp_path / "never.npz"
    assert main(args(x0_file, out, **over)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert not out.exists()


def test_bad_init_files(tmp_path, capsys):
    out = tmp_path / "never.npz"
    assert main(args(tmp_path / "missing.npy", out)) == 2
    assert "not found" in capsys.readouterr().err
    np.save(tmp_path / "int.npy", np.zeros((8, 3), dtype=np.int64))
    assert main(args(tmp_path / "int.npy", out)) == 2
    assert "float32 or float64" in capsys.readouterr().err
    bad = np.zeros((8, 3))
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert main(args(tmp_path / "nan.npy", out)) == 2
    assert "NaN" in capsys.readouterr().err
    (tmp_path / "junk.npy").write_text("not numpy")
    assert main(args(tmp_path / "junk.npy", out)) == 2
    assert not out.exists()


def test_existing_output_is_refused_unless_overwrite(x0_file, tmp_path, capsys):
    """A second run to the same --out refuses it; --overwrite replaces it."""
    out = tmp_path / "o.npz"
    assert main(args(x0_file, out)) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(args(x0_file, out, **{"--steps": "3"})) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out must not be an existing file") and "--overwrite" in err
    assert out.read_bytes() == first
    assert main([*args(x0_file, out, **{"--steps": "3"}), "--overwrite"]) == 0
    assert np.load(out)["error"].shape == (4,)


@pytest.mark.parametrize("out,needle", [
    ("X0.npy", "would destroy the input"),     # the --init file itself
    ("link.npy", "would destroy the input"),   # the same file through a symlink
    ("sub", "which is a folder"),
    ("X0.npy/o.npz", "is a file, not a folder"),
    ("missing/o.npz", "does not exist"),
])
def test_bad_outputs_are_refused_before_any_work(x0_file, tmp_path, capsys, out, needle):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.npy").symlink_to(x0_file)
    before = x0_file.read_bytes()
    assert main([*args(x0_file, tmp_path / out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out must") and needle in err and err.count("\n") == 1
    assert x0_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X0.npy", "link.npy", "sub"]


def test_a_file_topology_is_an_input_too(tmp_path, capsys):
    W = tmp_path / "W.npy"
    np.save(W, parse_topology("ring:8").W)
    argv = ["--topology", f"file:{W}", "--gamma", "0.5", "--steps", "2", "--dim", "3",
            "--out", str(W), "--overwrite", "--quiet"]
    assert main(argv) == 2
    assert "would destroy the input" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(W), parse_topology("ring:8").W)


def test_sizes_are_checked_against_memory(tmp_path, capsys, monkeypatch):
    """The generated X0 and the error history are estimated before anything is allocated."""
    from choco.run.consensus import run_bytes

    monkeypatch.setenv("CHOCO_MEMORY_LIMIT", "1e8")
    out = tmp_path / "o.npz"
    base = ["--gamma", "0.5", "--out", str(out), "--quiet"]
    assert run_bytes(8, 100000, 500) > 1e8  # 8 × 1e5 float64 entries, 16 copies
    assert main([*base, "--dim", "100000"]) == 2
    err = capsys.readouterr().err
    assert "the consensus run must fit in the memory limit of 100,000,000 bytes" in err
    most = int(re.search(r"lower --dim to at most ([0-9,]+)", err)[1].replace(",", ""))
    assert run_bytes(8, most, 500) <= 1e8 < run_bytes(8, most + 1, 500)
    assert main([*base, "--dim", "10", "--steps", "10000000"]) == 2
    assert "lower --steps to at most" in capsys.readouterr().err
    assert not out.exists()

"""``python -m choco.consensus``: outputs against formulas, and every bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from choco.consensus import main
from topologies import parse_topology

from .conftest import run_python


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

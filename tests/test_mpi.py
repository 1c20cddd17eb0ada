"""The same gossip code under real ``mpiexec`` with 2, 4 and 8 ranks, and the CLI over MPI.

Each launch costs seconds (every rank imports torch), so checks are grouped: one launch per
rank count runs every topology × compressor case and compares it with the in-process network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from .helpers import TESTS, run_mpi, run_python

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("n", [2, 4, 8])
def test_gossip_over_mpi_matches_in_process_network(n, tmp_path):
    out = tmp_path / "checks.json"
    proc = run_mpi(n, [str(TESTS / "mpi" / "gossip_check.py"), str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["size"] == n
    failed = {k: v for k, v in result["checks"].items() if not v[0]}
    assert not failed, failed
    # every topology × compressor ran the bitwise comparison and the copy identity
    assert sum(k.endswith("mpi_equals_local") for k in result["checks"]) >= 3
    assert "lgc_switch_agreement" in result["checks"]  # every rank named the corrupted one


def test_consensus_cli_mpi_equals_local(tmp_path):
    x0 = np.random.default_rng(5).standard_normal((8, 300)).astype(np.float32)
    np.save(tmp_path / "X0.npy", x0)
    common = ["--topology", "ring:8", "--compressor", "topk:0.05", "--gamma", "0.3",
              "--steps", "150", "--init", str(tmp_path / "X0.npy"), "--seed", "4", "--json"]
    local = run_python(["-m", "choco.consensus", *common, "--out", str(tmp_path / "l.npz")])
    assert local.returncode == 0, local.stderr
    proc = run_mpi(8, ["choco.consensus", "--backend", "mpi", *common,
                       "--out", str(tmp_path / "m.npz")], module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b = np.load(tmp_path / "l.npz"), np.load(tmp_path / "m.npz")
    assert a["x"].dtype == np.float32
    assert np.array_equal(a["x"], b["x"])
    assert np.array_equal(a["error"], b["error"])
    assert np.array_equal(a["bytes_sent"], b["bytes_sent"])
    # top-5% of 300 = 15 values + 15 int32 positions + 16-byte header, to 2 neighbours
    assert b["bytes_sent"].tolist() == [150 * 2 * (16 + 8 * 15)] * 8
    assert summary["error_final"] == pytest.approx(float(b["error"][-1]))


def test_wrong_rank_count_aborts_without_output(tmp_path):
    np.save(tmp_path / "X0.npy", np.zeros((8, 4)))
    out = tmp_path / "out.npz"
    proc = run_mpi(4, ["choco.consensus", "--backend", "mpi", "--topology", "ring:8",
                       "--compressor", "sign", "--gamma", "0.5", "--steps", "3",
                       "--init", str(tmp_path / "X0.npy"), "--out", str(out)],
                   module=True, timeout=120)
    assert proc.returncode != 0
    assert "mpiexec -n 8 is required" in proc.stderr
    assert "got 4 ranks" in proc.stderr
    assert not out.exists()


def test_one_failing_rank_aborts_the_job_with_its_error():
    proc = run_mpi(3, [str(TESTS / "mpi" / "fail_check.py")], timeout=60, script=True)
    assert proc.returncode != 0
    assert "deliberate failure on rank 1" in proc.stderr


def test_training_over_mpi(tmp_path):
    """Every algorithm, identity≡exact, all-reduce replicas, mean preservation, the paper's
    DCD divergence and exact resume, in one ``mpiexec -n 4`` launch."""
    proc = run_mpi(4, [str(TESTS / "mpi" / "train_check.py"), str(tmp_path)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checks = json.loads((tmp_path / "checks.json").read_text())
    failed = {k: v for k, v in checks.items() if not v[0]}
    assert not failed, failed
    assert {"resume_exact/mlp", "resume_exact/lstm-dropout",
            "identity_gamma1_equals_exact_dpsgd", "allreduce_replicas_identical",
            "gossip_preserves_network_mean", "paper/dcd_randk_diverges_choco_trains"} <= set(checks)
    assert sum(k.startswith("short_run/") for k in checks) == 7


def test_local_backend_under_mpiexec_is_refused(tmp_path):
    """Each rank would run the whole network and write the same file: refused, nothing written."""
    np.save(tmp_path / "X0.npy", np.zeros((4, 3)))
    out = tmp_path / "out.npz"
    proc = run_mpi(2, ["choco.consensus", "--backend", "local", "--topology", "ring:4",
                       "--compressor", "sign",
                       "--gamma", "0.5", "--steps", "2", "--init", str(tmp_path / "X0.npy"),
                       "--out", str(out)], module=True, timeout=120)
    assert proc.returncode == 2
    assert "pass --backend mpi" in proc.stderr
    assert not out.exists()

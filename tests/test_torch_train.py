"""``choco-train`` under a real ``torchrun`` (gloo on CPU) equals the in-process backend."""

from __future__ import annotations

import json

import pytest
import torch

from choco.run.train import main

from .helpers import differences, rows, run_torchrun

pytestmark = pytest.mark.torchrun

OPTIONS = ["--topology", "ring:4", "--epochs", "2", "--seed", "4", "--gamma", "0.5",
           "--compressor", "topk:0.05", "--checkpoint-every", "2", "--quiet"]


def test_choco_train_under_torchrun_equals_local_backend(tmp_path):
    dist, local = tmp_path / "torch", tmp_path / "local"
    proc = run_torchrun(4, ["-m", "choco.train", *OPTIONS, "--out", str(dist)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*OPTIONS, "--backend", "local", "--nodes", "4", "--out", str(local)]) == 0
    config = json.loads((dist / "config.json").read_text())
    assert config["backend"] == "torch" and "gloo" in config["mpi"]  # --backend auto chose it
    assert rows(dist) == rows(local)
    assert differences(torch.load(dist / "model.pt"), torch.load(local / "model.pt")) == []


def test_local_backend_under_torchrun_is_refused(tmp_path):
    proc = run_torchrun(4, ["-m", "choco.train", "--backend", "local", "--out",
                            str(tmp_path / "x")], timeout=120)
    assert proc.returncode != 0 and "--backend torch" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_choco_train_on_cuda_under_torchrun(tmp_path):  # pragma: no cover - needs GPUs
    proc = run_torchrun(4, ["-m", "choco.train", *OPTIONS, "--device", "cuda", "--out",
                            str(tmp_path / "cuda")])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_consensus_under_torchrun_equals_local(tmp_path):
    import numpy as np

    from choco.run.consensus import main as consensus

    common = ["--topology", "ring:4", "--steps", "30", "--dim", "50", "--gamma", "0.5",
              "--compressor", "sign", "--quiet"]
    proc = run_torchrun(4, ["-m", "choco.consensus", *common, "--out", str(tmp_path / "t.npz")],
                        timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert consensus([*common, "--backend", "local", "--out", str(tmp_path / "l.npz")]) == 0
    a, b = np.load(tmp_path / "t.npz"), np.load(tmp_path / "l.npz")
    for key in ("x", "error", "bytes_sent"):
        np.testing.assert_array_equal(a[key], b[key])

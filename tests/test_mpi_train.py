"""``choco-train`` under a real ``mpiexec -n 4`` against the in-process backend.

The per-node program is the same for both backends (docs/compressors.md: "local and MPI
runs are bit-identical"), so the same options must give the same averaged ``model.pt``, the
same per-node model and optimizer/gossip state in each rank's last checkpoint, and the same
metric rows (wall time aside). One launch covers every compressor of
``tests/mpi/train_equiv_check.py``; the in-process runs are made once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from choco.train import main

from .helpers import TESTS, differences, rank_state, rows, run_mpi
from .mpi.train_equiv_check import COMPRESSORS

pytestmark = pytest.mark.mpi

OPTIONS = ["--topology", "ring:4", "--nodes", "4", "--epochs", "2", "--seed", "3",
           "--checkpoint-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """``{compressor: (local output, mpi output)}`` for the same options."""
    root = tmp_path_factory.mktemp("train_equiv")
    proc = run_mpi(4, [str(TESTS / "mpi" / "train_equiv_check.py"), str(root / "mpi"),
                       *OPTIONS], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for spec, gamma in COMPRESSORS:
        name = spec.replace(":", "_")
        local, mpi = root / "local" / name, root / "mpi" / name
        assert main([*OPTIONS, "--backend", "local", "--compressor", spec, "--gamma", gamma,
                     "--out", str(local)]) == 0
        assert json.loads((mpi / "config.json").read_text())["backend"] == "mpi"
        assert json.loads((local / "config.json").read_text())["backend"] == "local"
        out[spec] = local, mpi
    return out


@pytest.mark.parametrize("spec", [spec for spec, _ in COMPRESSORS])
def test_train_under_mpiexec_equals_local_backend(runs, spec):
    """Every node's model and gossip state, x̄, and the metric rows, bit for bit."""
    a, b = runs[spec]
    assert differences(torch.load(a / "model.pt"), torch.load(b / "model.pt")) == []
    for rank in range(4):
        sa, sb = (rank_state(f, rank) for f in (a, b))
        assert sa["epoch"] == sb["epoch"] == 2
        assert differences(sa["model"], sb["model"]) == [], rank
        assert differences(sa["opt"], sb["opt"]) == [], rank
    ra, rb = rows(a), rows(b)
    assert [r["epoch"] for r in ra] == [1, 2]
    assert ra[0].keys() == rb[0].keys()
    # every reduction over nodes adds in rank order on both backends: rows are bit-identical
    assert ra == rb

"""Resume is exact with randomized compressors, for the average and for every node.

A run of 3 epochs and a run of 2 epochs resumed to 3 (same ``--out``) must write the same
metric rows (wall time aside), the same ``model.pt`` and, in each rank's checkpoint after
the last epoch, the same per-node model and gossip state. rand-k draws its positions and
QSGD its stochastic rounding from seeds keyed by (seed, rank, round); top-k (tested in
test_train.py) is deterministic and would not notice a round counter or a random stream
that is lost on resume.
"""

from __future__ import annotations

import pytest
import torch

from choco.run.checkpoint import find_latest
from choco.train import main

from .helpers import differences, rank_state, rows

COMMON = ["--backend", "local", "--nodes", "4", "--topology", "ring:4", "--gamma", "0.3",
          "--seed", "7", "--checkpoint-every", "1", "--eval-local", "false", "--quiet"]


def flat_model(state: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double() for v in state["model"].values()])


@pytest.mark.parametrize("compressor", ["randk:0.1", "qsgd:4", "lgc:warmup=50"])
def test_resume_with_randomized_compressor_is_exact_per_node(tmp_path, compressor):
    a, b = tmp_path / "a", tmp_path / "b"
    run = [*COMMON, "--compressor", compressor]
    assert main([*run, "--epochs", "3", "--out", str(a)]) == 0
    assert main([*run, "--epochs", "2", "--out", str(b)]) == 0
    assert find_latest(b).epoch == 2
    assert main([*run, "--epochs", "3", "--out", str(b), "--resume"]) == 0

    ra, rb = rows(a), rows(b)
    assert [r["epoch"] for r in ra] == [1, 2, 3]
    assert ra == rb
    assert ra[-1]["bytes_sent"] > 0
    ma, mb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert differences(ma, mb) == []

    models = []
    for rank in range(4):
        sa, sb = rank_state(a, rank), rank_state(b, rank)
        assert sa["epoch"] == sb["epoch"] == 3
        # this node's model, then everything else a resume restores (optimizer: momentum,
        # gossip x̂, s, the message in flight, round counter). Not the wall time, and not
        # torch's generator state, which the local backend's threads share.
        assert differences(sa["model"], sb["model"]) == [], rank
        assert differences(sa["opt"], sb["opt"]) == [], rank
        models.append(flat_model(sa))
    # the nodes hold different models, so comparing them one by one says more than x̄
    assert all(not torch.equal(models[0], m) for m in models[1:])

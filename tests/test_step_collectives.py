"""No global collective at every training step: divergence is checked every K steps.

Counts the all-reduces a node makes in one epoch of ``choco-train`` (in-process backend) and
compares with the steps it took: the training loop may only add one per ``--divergence-check``
steps (and one at the end of the epoch), plus the fixed handful of the metrics row.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter

from choco.comm.local import LocalCommunicator
from choco.run.train import main


def count_allreduces(monkeypatch) -> Counter:
    calls: Counter = Counter()
    lock = threading.Lock()
    real = LocalCommunicator.allreduce

    def counted(self, array):
        with lock:
            calls[self.rank] += 1
        return real(self, array)

    monkeypatch.setattr(LocalCommunicator, "allreduce", counted)
    return calls


def run(tmp_path, monkeypatch, check: int) -> tuple[Counter, int]:
    out = tmp_path / f"k{check}"
    with monkeypatch.context() as patch:
        calls = count_allreduces(patch)
        assert main(["--epochs", "1", "--nodes", "4", "--topology", "ring:4", "--gamma",
                     "0.5", "--divergence-check", str(check), "--quiet", "--out",
                     str(out)]) == 0
    steps = json.loads((out / "config.json").read_text())["steps_per_epoch"]
    return calls, steps


def test_the_loop_adds_one_allreduce_per_check_not_per_step(tmp_path, monkeypatch):
    every_step, steps = run(tmp_path, monkeypatch, 1)
    sparse, _ = run(tmp_path, monkeypatch, 10)
    assert steps > 20
    assert len(set(every_step.values())) == 1 and len(set(sparse.values())) == 1
    # the metrics row and the model average cost the same in both runs; the loop's checks
    # go from `steps` (every step) to ceil(steps / 10)
    assert every_step[0] - sparse[0] == steps - math.ceil(steps / 10)
    assert sparse[0] < steps / 2

"""Faults injected from outside the code under test, under real ``mpiexec``.

``tests/faults/sitecustomize.py`` (put on ``PYTHONPATH`` of the launched ranks only) kills one
rank with SIGKILL in the middle of a checkpoint write. The job must end promptly, the
previous checkpoint generation must survive complete, and ``--resume`` must finish
bit-identical to an uninterrupted run (which, local and MPI being bit-identical, runs
in-process).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from choco.run.checkpoint import MANIFEST, find_latest
from choco.run.train import main

from .helpers import TESTS, differences, rows, run_mpi, run_mpmd

pytestmark = pytest.mark.mpi

COMMON = ["--topology", "ring:4", "--epochs", "4", "--checkpoint-every", "1", "--seed", "5",
          "--compressor", "randk:0.2", "--gamma", "0.5", "--eval-local", "false", "--quiet"]
#: seconds from the injected kill to the end of the whole job that we accept
FAULT_TO_EXIT_LIMIT = 30.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert main([*COMMON, "--backend", "local", "--nodes", "4", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("rank,file", [(2, "rank2.pt"), (0, MANIFEST)])
def test_crash_in_a_checkpoint_write_then_resume_is_exact(reference, tmp_path, rank, file):
    out, stamp = tmp_path / "run", tmp_path / "killed_at"
    env = {"PYTHONPATH": str(TESTS / "faults"),  # put in front of this tree
           "CHOCO_FAULT_FILE": file, "CHOCO_FAULT_DIR": "epoch-000003",
           "CHOCO_FAULT_RANK": str(rank), "CHOCO_FAULT_STAMP": str(stamp)}
    proc = run_mpi(4, ["choco.train", *COMMON, "--out", str(out)], module=True, env=env,
                   timeout=180)
    ended = time.time()
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert stamp.exists(), proc.stderr[-3000:]  # the fault did fire
    fault_to_exit = ended - float(stamp.read_text())
    print(f"\nkill of rank {rank} while writing {file}: job ended {fault_to_exit:.2f} s later")
    assert fault_to_exit < FAULT_TO_EXIT_LIMIT

    # the generation being written is incomplete; the one before it is whole
    assert not (out / "checkpoint" / "epoch-000003" / MANIFEST).exists()
    gen = find_latest(out)
    assert gen is not None and gen.epoch == 2

    proc = run_mpi(4, ["choco.train", *COMMON, "--out", str(out), "--resume"], module=True,
                   timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rows(out) == rows(reference)
    assert differences(torch.load(out / "model.pt"), torch.load(reference / "model.pt")) == []
    # only the newest generation is kept; the crash's leftovers are gone
    left = sorted(p.relative_to(out / "checkpoint").as_posix()
                  for p in (out / "checkpoint").rglob("*"))
    assert left == ["epoch-000004", *(f"epoch-000004/{name}" for name in
                                      sorted([MANIFEST, *(f"rank{r}.pt" for r in range(4))]))]


@pytest.mark.parametrize("first,second,field", [
    (["--topology", "ring:4"], ["--topology", "complete:4"], "'topology' is 'ring:4' on "
                                                             "ranks 0-1 but 'complete:4'"),
    (["--gamma", "0.5"], ["--gamma", "auto"], "'gamma'"),  # only some ranks would tune γ
])
def test_ranks_started_with_different_options_stop_with_the_difference(tmp_path, first,
                                                                        second, field):
    out = tmp_path / "run"
    proc, seconds = run_mpmd([(2, ["-m", "choco.train", *args, "--out", str(out), "--epochs",
                                    "1", "--quiet"]) for args in (first, second)])
    print(f"\nMPMD {first} vs {second}: exit {proc.returncode} after {seconds:.1f} s")
    assert proc.returncode == 2 and seconds < 30
    assert "ranks disagree on the run's configuration" in proc.stderr and field in proc.stderr
    assert proc.stderr.count("error:") == 1  # printed once, by rank 0
    assert not out.exists()

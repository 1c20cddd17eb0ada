"""Cheap refusals come first, and a refused or interrupted start leaves --out as it was.

Issue 22 item 2. Every refusal that depends only on the options and the file system must
happen before the γ tuner, the data loading or any write: the tests replace the expensive
steps (:func:`choco.run.plan.make_plan` for choco-train; the X0 construction and the γ
resolution for choco-consensus) by a function that fails the test if it is reached, and
compare the output folder's listing and modification times before and after. No timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from choco.run import consensus as consensus_cli
from choco.run import train as train_cli

from .helpers import ROOT, launch_env, run_mpi


class Reached(Exception):
    """Raised by a stand-in for an expensive step: the refusal came too late."""


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (itself included) with its mtime and size."""
    if not folder.exists():
        return {}
    paths = [folder, *sorted(folder.rglob("*"))]
    return {str(p.relative_to(folder.parent)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in paths}


def state(out: Path) -> object:
    """What a test compares before and after: the folder's snapshot, or the file's bytes."""
    return out.read_bytes() if out.is_file() else snapshot(out)


@pytest.fixture
def no_plan(monkeypatch):
    def reached(*args, **kwargs):
        raise Reached("make_plan (data loading, γ tuner) was reached")

    monkeypatch.setattr(train_cli, "make_plan", reached)


def finished_run(out: Path) -> None:
    """A folder as a finished run leaves it (the contents are never read by the refusal)."""
    out.mkdir()
    (out / "config.json").write_text("{}\n")
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    (out / "model.pt").write_bytes(b"model")


def unfinished_start(out: Path) -> None:
    """A folder as a start interrupted before its first epoch could leave it (older choco
    left exactly this): config.json and an empty metrics.jsonl."""
    out.mkdir()
    (out / "config.json").write_text("{}\n")
    (out / "metrics.jsonl").write_text("")


def file_instead_of_folder(out: Path) -> None:
    out.write_text("notes\n")


def empty_folder(out: Path) -> None:
    out.mkdir()


def nothing(out: Path) -> None:
    pass


REFUSALS = [
    pytest.param(finished_run, [], "already holds a run", id="out-holds-a-run"),
    pytest.param(file_instead_of_folder, [], "is a file", id="out-is-a-file"),
    pytest.param(empty_folder, ["--resume"], "needs a complete checkpoint",
                 id="resume-without-checkpoint"),
    pytest.param(nothing, ["--resume"], "needs a complete checkpoint",
                 id="resume-without-folder"),
    pytest.param(finished_run, ["--resume", "--overwrite"], "pass only one",
                 id="resume-and-overwrite"),
    pytest.param(nothing, ["--dataset", "cifar10", "--model", "resnet20", "--data-dir",
                           "/nonexistent-choco-data"], "cifar-10-batches-py",
                 id="data-folder-missing"),
    pytest.param(nothing, ["--dataset", "cifar10", "--model", "resnet20"], "--data-dir",
                 id="data-dir-not-given"),
    pytest.param(empty_folder, ["--device", "cuda"], "cuda", id="cuda-without-gpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason="needs a machine without CUDA")),
]


@pytest.mark.parametrize("make, argv, needle", REFUSALS)
def test_train_refuses_before_any_work(tmp_path, capsys, no_plan, make, argv, needle):
    out = tmp_path / "run"
    make(out)
    before = state(out)
    assert train_cli.main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and needle in captured.err, captured.err
    assert "tuning gamma" not in captured.out
    assert state(out) == before
    assert out.exists() == (make is not nothing)


@pytest.mark.parametrize("make", [nothing, empty_folder, unfinished_start])
def test_a_folder_without_a_run_is_accepted(tmp_path, capsys, no_plan, make):
    """Nothing, an empty folder or an unfinished start is not "a run": the start goes on
    (to the plan, here the stand-in) without --overwrite."""
    out = tmp_path / "run"
    make(out)
    with pytest.raises(Reached):
        train_cli.main(["--out", str(out)])
    assert train_cli.run_held(out) == []


def test_run_held_names_what_makes_a_run(tmp_path):
    out = tmp_path / "run"
    finished_run(out)
    assert train_cli.run_held(out) == ["config.json", "metrics.jsonl", "model.pt"]
    (out / "model.pt").unlink()
    (out / "metrics.jsonl").write_text("")
    assert train_cli.run_held(out) == []
    (out / "checkpoint").mkdir()
    assert train_cli.run_held(out) == []  # an empty checkpoint folder holds nothing
    (out / "checkpoint" / "epoch-000001").mkdir()
    assert train_cli.run_held(out) == ["config.json", "checkpoint"]


@pytest.fixture
def no_consensus_work(monkeypatch):
    def reached(*args, **kwargs):
        raise Reached("X0 or the γ tuner was reached")

    monkeypatch.setattr(consensus_cli, "_initial", reached)
    monkeypatch.setattr(consensus_cli, "resolve_gamma", reached)


@pytest.mark.parametrize("setup, argv, needle", [
    (lambda d: (d / "c.npz").write_bytes(b"old"), ["--out", "{d}/c.npz"], "--overwrite"),
    (lambda d: (d / "c.npz").mkdir(), ["--out", "{d}/c.npz"], "which is a folder"),
    (lambda d: None, ["--out", "{d}/missing/c.npz"], "does not exist"),
    (lambda d: None, ["--out", "{d}/c.npz", "--init", "{d}/c.npz"], "input"),
    (lambda d: None, ["--out", "{d}/c.npz", "--steps", "-1"], "--steps"),
])
def test_consensus_refuses_before_any_work(tmp_path, capsys, no_consensus_work, setup,
                                           argv, needle):
    setup(tmp_path)
    before = snapshot(tmp_path)
    argv = [a.format(d=tmp_path) for a in argv]
    assert consensus_cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and needle in captured.err, captured.err
    assert snapshot(tmp_path) == before


@pytest.mark.mpi
def test_train_refuses_under_mpi_before_the_tuner(tmp_path):
    """Under mpiexec every rank refuses, once, before the tuner (the tuner line is not
    printed) and the folder is untouched."""
    out = tmp_path / "run"
    finished_run(out)
    before = snapshot(out)
    proc = run_mpi(2, ["-m", "choco.train", "--topology", "ring:2", "--out", str(out)],
                   timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("already holds a run") == 1, proc.stderr
    assert "tuning gamma" not in proc.stdout
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- Ctrl-C
def start_train(out: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "choco.train", "--out", str(out), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=launch_env())


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 240) -> str:
    """Read stdout until a line starting with ``prefix``; fail if the program ends first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    proc.kill()
    pytest.fail(f"no line starting with {prefix!r}; got {seen}")


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the program did not end after Ctrl-C")
    return proc.returncode, err


@pytest.mark.parametrize("moment, argv", [
    ("tuning gamma", []),               # during the γ tuner: nothing written yet
    ("gamma ", ["--gamma", "0.5"]),     # after the start is announced (config.json written)
])
def test_ctrl_c_is_one_line_exit_130_and_leaves_no_start(tmp_path, moment, argv):
    out = tmp_path / "new" / "run"  # the start creates both folders
    proc = start_train(out, "--topology", "ring:16", "--epochs", "50", *argv)
    wait_for_line(proc, moment)
    code, err = interrupt(proc)
    assert code == 130, err
    assert err.splitlines() == ["interrupted (Ctrl-C)"], err
    # the folder is as it was (absent), unless the first epoch was recorded in the meantime:
    # then it holds a run that really started (metrics), which --resume/--overwrite handle
    if out.exists():
        assert train_cli.run_held(out), sorted(os.listdir(out))
    else:
        assert os.listdir(tmp_path) == []


def test_start_guard_undoes_a_start_interrupted_inside_mkdir_parents(tmp_path):
    # Ctrl-C between the two mkdirs of mkdir(parents=True): the parent exists, --out does not;
    # the guard must still remove the parent it made (CI once saw 'new' left behind)
    out = tmp_path / "new" / "run"
    guard = train_cli.StartGuard(out)
    (tmp_path / "new").mkdir()
    guard.undo()
    assert os.listdir(tmp_path) == []


def test_start_guard_keeps_a_parent_that_holds_other_files(tmp_path):
    out = tmp_path / "new" / "run"
    guard = train_cli.StartGuard(out)
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (tmp_path / "new" / "mine.txt").write_text("not the run's")  # written by someone else
    guard.undo()
    assert sorted(os.listdir(tmp_path)) == ["new"]
    assert os.listdir(tmp_path / "new") == ["mine.txt"]


def test_start_guard_removes_a_temporary_file_of_an_interrupted_write(tmp_path):
    # Ctrl-C between atomic_write's mkstemp and its rename leaves config.json.<random>.tmp
    out = tmp_path / "run"
    guard = train_cli.StartGuard(out)
    out.mkdir()
    (out / "config.json.k2j4x.tmp").write_text("{")
    guard.undo()
    assert os.listdir(tmp_path) == []

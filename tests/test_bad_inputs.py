"""Every bad input of every program: one clean paragraph, exit status 2, nothing touched.

One table of bad command lines across ``python -m choco.tuning``, ``python -m
choco.consensus`` (``choco-consensus``), ``python -m choco.compress``, ``python -m
choco.bench``, ``python -m topologies`` and ``choco-train``. Each row runs in-process
(``main(argv)``, in a fresh working folder holding the inputs) and checks:

* exit status 2 (returned, or ``SystemExit(2)`` from the command-line parser);
* stderr is exactly one line starting with ``error: `` (one paragraph: no newline inside
  the message), with no ``Traceback``; nothing on stdout;
* the message holds the row's needle, and its three parts, by this heuristic:

  - a requirement: one of :data:`REQUIREMENT_WORDS` (``must``, ``need``, ``required``,
    ``takes``, ``refuse``, ``valid``, ``pass``, ``accepts``);
  - the value received: ``got``, or one of the row's non-option arguments verbatim;
  - a fix: text after a ``;``. The messages of ``choco-train`` (whose files this change
    does not touch) may instead carry the fix in the requirement itself (``must be >= 1``,
    ``one of ...``, ``e.g. ...``): :data:`IMPLIED_FIX`;

* no file of the working folder was created, removed or changed (names, contents,
  modification times and permission bits are compared before and after; the folder
  itself may be probed for writability by a temporary file removed at once).

Memory refusals run with ``CHOCO_MEMORY_LIMIT=2e9``, so that they do not depend on the
machine. A few rows also run as real subprocesses (in parallel, each with a timeout), to
show that no traceback reaches the terminal, including the default memory limit on
``ring:1000000000`` (which used to grow to gigabytes and die) and the ``choco-consensus``
console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from topologies import parse_topology

REQUIREMENT_WORDS = ("must", "need", "required", "takes", "refuse", "valid", "pass",
                     "accepts")
IMPLIED_FIX = ("must be", "one of", "e.g.", "valid", "pass ", "did you mean")


def _program(name: str) -> Callable[[list[str]], int]:
    if name == "tuning":
        from choco.run.tuning_cli import main
    elif name == "consensus":
        from choco.run.consensus import main
    elif name == "compress":
        from choco.run.compress_cli import main
    elif name == "bench":
        from choco.run.bench import main
    elif name == "topologies":
        from topologies.__main__ import main
    elif name == "train":
        from choco.run.train import main
    else:
        raise AssertionError(name)
    return main


def make_inputs(folder: Path) -> None:
    """The files the bad command lines point at."""
    rng = np.random.default_rng(0)
    np.save(folder / "X0.npy", rng.standard_normal((8, 6)))
    np.save(folder / "X4.npy", rng.standard_normal((4, 6)))
    np.save(folder / "v.npy", rng.standard_normal(10).astype(np.float32))
    np.save(folder / "W.npy", parse_topology("ring:8").W)
    np.savez(folder / "a.npz", x=np.zeros(3))
    np.save(folder / "nan.npy", np.array([1.0, np.nan], dtype=np.float32))
    (folder / "afile").write_text("a file, not a folder\n")
    (folder / "folder").mkdir()
    (folder / "existing.npz").write_bytes(b"the user's results")
    (folder / "existing.npy").write_bytes(b"the user's array")
    (folder / "big.txt").write_text("0 1\n1 99999999999\n")
    (folder / "wrongtype.toml").write_text('epochs = "many"\n')
    (folder / "unknown.toml").write_text("epoch = 3\n")
    (folder / "invalid.toml").write_text("epochs = = 3\n")
    os.symlink("X0.npy", folder / "link.npy")  # the same file under another name
    os.link(folder / "v.npy", folder / "hard.npy")  # the same file, another path


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: kind, and for files mtime, mode and contents."""
    state: dict[str, tuple] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            state[rel] = ("folder",)
        else:
            st = path.stat()
            state[rel] = ("file", st.st_mtime_ns, st.st_mode, path.read_bytes())
    return state


TRAIN = ["--gamma", "0.5", "--epochs", "1", "--quiet"]  # no tuner run before the error
PROC = Path("/proc")

#: (program, argv, needle)
ROWS: list[tuple[str, list[str], str]] = [
    # python -m choco.tuning
    ("tuning", ["--topology", "rung:8"], "rung:8"),
    ("tuning", ["--compressor", "topk:0.01+naturel"], "unknown compressor 'naturel'"),
    ("tuning", ["--compressor", "scaled(sgn)"], "unknown compressor 'sgn'"),
    ("tuning", ["--steps", "-1"], "--steps must be >= 1"),
    ("tuning", ["--dim", "0"], "--dim must be >= 1"),
    ("tuning", ["--dim", "abc"], "--dim must be an integer"),
    ("tuning", ["--grid", "100000000000"], "--grid must be at most"),
    ("tuning", ["--seed", "-1"], "--seed must be in [0, 2^64)"),
    ("tuning", ["--topology", "ring:100000"], "use at most n ="),
    ("tuning", ["--dim", "100000000", "--steps", "1"], "lower --dim to at most"),
    ("tuning", ["--topology", "star:5", "--mixing", "uniform"], "regular graph"),
    ("tuning", ["--bogus"], "'--bogus'"),
    # python -m choco.consensus
    ("consensus", ["--init", "a.npz"], ".npz archive"),
    ("consensus", ["--init", "X0.npy", "--out", "folder"], "which is a folder"),
    ("consensus", ["--init", "X0.npy", "--out", "afile/o.npz"], "is a file, not a folder"),
    ("consensus", ["--init", "X0.npy", "--out", "nowhere/o.npz"], "does not exist"),
    ("consensus", ["--init", "X0.npy", "--out", "X0.npy"], "would destroy the input"),
    ("consensus", ["--init", "X0.npy", "--out", "link.npy", "--overwrite"],
     "would destroy the input"),
    ("consensus", ["--init", "X0.npy", "--out", "existing.npz"], "pass --overwrite"),
    ("consensus", ["--topology", "file:W.npy", "--out", "W.npy", "--overwrite"],
     "would destroy the input"),
    ("consensus", ["--dim", "100000000000"], "lower --dim to at most"),
    ("consensus", ["--dim", "10", "--steps", "10000000000"], "lower --steps to at most"),
    ("consensus", ["--gamma", "abc"], "(0, 1]"),
    ("consensus", ["--init", "X4.npy"], "one row per node"),
    ("consensus", ["--seed", "-1"], "--seed must be in"),
    ("consensus", ["--steps", "x"], "--steps must be an integer"),
    ("consensus", ["--init", "X0.npy", "--out", str(PROC / "o.npz")], "--out must be"),
    # python -m choco.compress
    ("compress", ["sign", "--in", "v.npy", "--out", "v.npy"], "would destroy the input"),
    ("compress", ["sign", "--in", "v.npy", "--out", "hard.npy", "--overwrite"],
     "would destroy the input"),
    ("compress", ["sign", "--in", "v.npy", "--out", "existing.npy"], "pass --overwrite"),
    ("compress", ["sign", "--in", "v.npy", "--out", "folder"], "which is a folder"),
    ("compress", ["topk:0.01+naturel", "--in", "v.npy", "--out", "q.npy"],
     "unknown compressor 'naturel'"),
    ("compress", ["sign", "--in", "nan.npy", "--out", "q.npy"], "finite"),
    ("compress", ["sign", "--in", "v.npy"], "--out is required"),
    ("compress", ["sign", "--in", "v.npy", "--out", "q.npy", "--seed", "x"], "integer"),
    ("compress", ["sign", "--in", "folder", "--out", "q.npy"], "(a folder)"),
    ("compress", ["sign", "--in", "a.npz", "--out", "q.npy"], ".npz archive"),
    # python -m choco.bench
    ("bench", ["compressors", "--specs", ""], "--specs must name"),
    ("bench", ["compressors", "--threads", "0"], "--threads must be >= 1"),
    ("bench", ["compressors", "--numel", "100000000000"], "lower --numel to at most"),
    ("bench", ["delta", "--numel", "100000000000"], "lower --numel to at most"),
    ("bench", ["nope"], "COMMAND must be one of"),
    ("bench", ["compressors", "--stat", "mean"], "--stat must be one of"),
    ("bench", ["compressors", "--specs", "sign,scaled(sgn)"], "unknown compressor 'sgn'"),
    ("bench", ["compressors", "--device", "tpu"], "--device must be"),
    # python -m topologies
    ("topologies", ["ring:1000000000"], "use at most n ="),
    ("topologies", ["complete:100000"], "n²·8"),
    ("topologies", ["file:big.txt"], "n = 100,000,000,000 nodes"),
    ("topologies", ["file:W.npy", "--save", "W.npy", "--overwrite"], "would destroy the input"),
    ("topologies", ["ring:8", "--save", "existing.npy"], "pass --overwrite"),
    ("topologies", ["ring:8", "--save", "folder"], "which is a folder"),
    ("topologies", ["ring:8", "--save", "afile/W.npy"], "is a file, not a folder"),
    ("topologies", ["ring:8", "--mixing", "foo"], "--mixing must be one of"),
    ("topologies", ["torus:7"], "ring"),
    ("topologies", [], "spec is required"),
    # choco-train
    ("train", ["--topology", "rung:8", *TRAIN], "rung:8"),
    ("train", ["--compressor", "topk:0.01+naturel", *TRAIN], "unknown compressor 'naturel'"),
    ("train", ["--algorithm", "gossip", *TRAIN], "choco, exact"),
    ("train", ["--model", "resnet99", *TRAIN], "resnet99"),
    ("train", ["--gamma", "0.5", "--epochs", "0", "--quiet"], ">= 1"),
    ("train", ["--gamma", "2", "--epochs", "1", "--quiet"], "(0, 1]"),
    ("train", ["--lr-milestones", "5,a", *TRAIN], "5,a"),
    ("train", ["--model-args", "foo", *TRAIN], "key=value"),
    ("train", ["--dataset", "cifar10", "--model", "resnet8", *TRAIN], "--data-dir"),
    ("train", ["--config", "wrongtype.toml", *TRAIN[:2], "--quiet"], "whole number"),
    ("train", ["--config", "unknown.toml", *TRAIN], "did you mean epochs"),
    ("train", ["--config", "invalid.toml", *TRAIN], "TOML"),
]


def check_message(err: str, program: str, argv: list[str], needle: str) -> str:
    """The assertions of the module docstring on one stderr; returns the message."""
    assert "Traceback" not in err, err
    assert err.startswith("error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one paragraph: {err!r}"
    message = err[len("error: "):].strip()
    assert needle in message, (needle, message)
    lower = message.lower()
    assert any(word in lower for word in REQUIREMENT_WORDS), f"no requirement: {message}"
    values = [arg for arg in argv if arg and not arg.startswith("-")]
    assert "got" in lower or any(v in message for v in values), f"no value: {message}"
    fix = message.partition(";")[2].strip()
    if program == "train":
        assert fix or any(w in lower for w in IMPLIED_FIX), f"no fix: {message}"
    else:
        assert fix, f"no fix after ';': {message}"
    return message


def run_in_process(program: str, argv: list[str], capsys) -> tuple[int, str, str]:
    main = _program(program)
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # the command-line parser
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_table_covers_every_program():
    programs = {program for program, _, _ in ROWS}
    assert programs == {"tuning", "consensus", "compress", "bench", "topologies", "train"}
    assert len(ROWS) >= 30


@pytest.mark.parametrize("program,argv,needle", ROWS,
                         ids=[f"{p}:{' '.join(a) or '(none)'}"[:70] for p, a, _ in ROWS])
def test_bad_input(program, argv, needle, tmp_path, monkeypatch, capsys):
    if PROC.as_posix() in " ".join(argv) and not PROC.is_dir():
        pytest.skip("no /proc on this system")
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHOCO_MEMORY_LIMIT", "2e9")
    before = snapshot(tmp_path)
    code, out, err = run_in_process(program, argv, capsys)
    assert code == 2, (code, out, err)
    assert out == "", out
    check_message(err, program, argv, needle)
    assert snapshot(tmp_path) == before, "a file was created or changed"


def test_overwrite_replaces_only_when_asked(tmp_path, monkeypatch, capsys):
    """The refused output of a second run is written once --overwrite is given."""
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["sign", "--in", "v.npy", "--out", "existing.npy"]
    assert run_in_process("compress", argv, capsys)[0] == 2
    assert (tmp_path / "existing.npy").read_bytes() == b"the user's array"
    assert run_in_process("compress", [*argv, "--overwrite"], capsys)[0] == 0
    assert np.load(tmp_path / "existing.npy").shape == (10,)
    argv = ["ring:4", "--save", "existing.npz", "--overwrite"]
    assert run_in_process("topologies", argv, capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "existing.npz"), parse_topology("ring:4").W)


SUBPROCESS_ROWS: list[tuple[list[str], str, dict[str, str]]] = [
    (["-m", "topologies", "ring:1000000000"], "use at most n =", {}),
    (["-m", "choco.tuning", "--dim", "abc"], "--dim must be an integer", {}),
    (["-m", "choco.compress", "sign", "--in", "v.npy", "--out", "v.npy"],
     "would destroy the input", {}),
]


def test_no_traceback_reaches_the_terminal(tmp_path):
    """Real processes, started together: one paragraph on stderr, exit 2, nothing written."""
    make_inputs(tmp_path)
    rows = list(SUBPROCESS_ROWS)
    script = shutil.which("choco-consensus") or str(Path(sys.executable).parent /
                                                     "choco-consensus")
    commands = [[sys.executable, *argv] for argv, _, _ in rows]
    if Path(script).exists():
        rows.append((["--init", "X0.npy", "--out", "X0.npy"], "would destroy the input",
                     {"CHOCO_MEMORY_LIMIT": "1e9"}))
        commands.append([script, "--init", "X0.npy", "--out", "X0.npy"])
    before = snapshot(tmp_path)
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, **env})
             for cmd, (_, _, env) in zip(commands, rows, strict=True)]
    try:
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err), (argv, needle, _) in zip(procs, results, rows, strict=True):
        assert proc.returncode == 2, (argv, proc.returncode, err[-2000:])
        assert out == "", (argv, out)
        check_message(err, "subprocess", argv, needle)
    assert snapshot(tmp_path) == before, "a file was created or changed"

"""A library script whose rank raises ends the job (issue 22 item 1).

The README's library example, with an exception injected on one rank, is run under plain
``mpiexec -n 4 python script.py`` (not ``python -m mpi4py``) and under ``torchrun``: without
the communicators' abort hook the other ranks would wait in their next exchange forever, so
a hang is caught by the subprocess timeout. The hook itself (chaining, size 1, opt-out) is
checked in a plain Python subprocess with a stand-in for the job.
"""

from __future__ import annotations

import re
import textwrap

import pytest

from .helpers import ROOT, run_mpi, run_python, run_torchrun, worker_output

README = (ROOT / "README.md").read_text()
#: the failing rank and step; the message is looked for in the output
FAILING_RANK, FAILING_STEP, MESSAGE = 2, 5, "injected failure on purpose"
#: subprocess timeout: a job left waiting fails the test (the job must end within ~30 s)
HANG_TIMEOUT = 60


def library_example() -> str:
    match = re.search(r"<!-- library-example -->\s*```diff\n(.*?)```", README, re.S)
    if match is None:
        pytest.fail("README has no diff block after <!-- library-example -->")
    # the example is a diff against a plain PyTorch loop: the script is its context and + lines
    code = "".join(line[1:] + "\n" for line in match.group(1).splitlines()
                   if line[:1] in (" ", "+")) if match else ""
    step = "    opt.step()"
    assert code.count(step) == 1, "the README example must call opt.step() once in its loop"
    inject = (f"    if rank == {FAILING_RANK} and step == {FAILING_STEP}:\n"
              f"        raise RuntimeError({MESSAGE!r})\n")
    return code.replace(step, inject + step)


def torch_version_of(code: str) -> str:
    """The example over torch.distributed: the MPI lines replaced by their torch forms."""
    replacements = {
        "from mpi4py import MPI\n": "import torch.distributed as dist\n",
        "from choco.comm.mpi import MPICommunicator\n":
            "from choco.comm.torchdist import TorchCommunicator\n",
        "rank, n = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()\n":
            'dist.init_process_group("gloo")\n'
            "rank, n = dist.get_rank(), dist.get_world_size()\n",
        "MPICommunicator(": "TorchCommunicator(",
    }
    for old, new in replacements.items():
        assert old in code, f"the README example no longer contains {old!r}"
        code = code.replace(old, new)
    return code


def assert_ended_with_traceback(returncode: int, stderr: str) -> None:
    assert returncode != 0, stderr[-3000:]
    assert "Traceback (most recent call last)" in stderr, stderr[-3000:]
    assert f"RuntimeError: {MESSAGE}" in stderr, stderr[-3000:]
    assert f"[rank {FAILING_RANK}] uncaught RuntimeError: ending the job" in stderr, \
        stderr[-3000:]


@pytest.mark.mpi
def test_readme_example_ends_under_plain_mpiexec(tmp_path):
    script = tmp_path / "train_ring.py"
    script.write_text(library_example())
    # the timeout is the hang detector: a rank left waiting would never end
    proc = run_mpi(4, [str(script)], timeout=HANG_TIMEOUT, script=True)
    assert_ended_with_traceback(proc.returncode, proc.stderr)


@pytest.mark.torchrun
def test_readme_example_ends_under_torchrun(tmp_path):
    script = tmp_path / "train_ring_torch.py"
    script.write_text(torch_version_of(library_example()))
    proc = run_torchrun(4, [str(script)], timeout=HANG_TIMEOUT)
    assert_ended_with_traceback(proc.returncode, worker_output(proc.stderr))


HOOK_SCRIPT = textwrap.dedent("""
    import os, sys, threading
    from choco.comm.abort import abort_wanted, install_abort_hook
    size = int(sys.argv[1])
    def end_job(code):
        print(f"END_JOB {code}", flush=True)
        os._exit(7)
    if abort_wanted(None):
        install_abort_hook(lambda: (1, size), end_job, "test")
    where = sys.argv[2]
    if where == "thread":
        t = threading.Thread(target=lambda: 1 / 0)
        t.start(); t.join()
        print("AFTER_THREAD", flush=True)
    elif where == "exit":
        sys.exit(5)
    else:
        raise ValueError("boom")
""")


@pytest.mark.parametrize("size, where, env, status, ended", [
    (4, "main", {}, 7, True),            # the job is ended after the traceback
    (4, "thread", {}, 7, True),          # an uncaught exception in a thread too
    (1, "main", {}, 1, False),           # one rank: plain Python behaviour
    (4, "main", {"CHOCO_NO_ABORT": "1"}, 1, False),   # opted out
    (4, "thread", {"CHOCO_NO_ABORT": "yes"}, 0, False),
    (4, "exit", {}, 5, False),           # sys.exit keeps its status
])
def test_hook_chains_and_ends_the_job(size, where, env, status, ended):
    proc = run_python(["-c", HOOK_SCRIPT, str(size), where], timeout=120,
                      env={"CHOCO_NO_ABORT": "", **env})
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert ("END_JOB 1" in proc.stdout) == ended, proc.stdout
    if where != "exit":
        error = "ZeroDivisionError" if where == "thread" else "ValueError: boom"
        assert error in proc.stderr and "Traceback" in proc.stderr, proc.stderr
    assert ("uncaught" in proc.stderr) == ended, proc.stderr
    if where == "thread" and not ended:
        assert "AFTER_THREAD" in proc.stdout


@pytest.mark.parametrize("value, wanted", [
    ("", True), ("0", True), ("false", True), ("1", False), ("yes", False), ("TRUE", False)])
def test_environment_switch(monkeypatch, value, wanted):
    from choco.comm.abort import abort_wanted

    monkeypatch.setenv("CHOCO_NO_ABORT", value)
    assert abort_wanted(None) is wanted
    assert abort_wanted(True) is True and abort_wanted(False) is False

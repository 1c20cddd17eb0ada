"""The torch.distributed backend: real ``torchrun --standalone`` launches (gloo on CPU).

Each launch costs seconds (every worker imports torch), so checks are grouped: one 4-rank
launch compares CHOCO-Gossip over :class:`~choco.comm.torchdist.TorchCommunicator` with
the in-process network bit for bit and provokes every start-up fault
(``tests/torchrun/comm_check.py``); four 3-rank launches end a job through
:func:`~choco.run.launch.run_torch` (``tests/torchrun/fail_check.py``). The launcher is
the ``torchrun`` next to this Python, else ``python -m torch.distributed.run``; without
either the launches are skipped, except under CI (``CI`` or ``CHOCO_REQUIRE_TORCHRUN``
set), where that is a failure. The rest runs in this process: launcher detection, refused
set-ups, and a one-rank process group.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from choco.comm.torchdist import TorchCommunicator
from choco.errors import CommError, UsageError
from choco.run.launch import (
    DEFAULT_TIMEOUT_S,
    init_from_env,
    launched_by_torchrun,
    run_torch,
)

from .helpers import LAUNCHER_VARS, ROOT, TESTS, free_port, run_torchrun, worker_output

#: seconds from a rank's failure to the end of the whole job that the tests accept
#: (measured: about 2.8 s, the 2 s grace of a non-zero rank included)
END_WITHIN_S = 20.0


# ------------------------------------------------------------------------------ launches
@pytest.mark.torchrun
@pytest.mark.slow
def test_gossip_and_collectives_over_torchrun_match_local(tmp_path):
    out = tmp_path / "checks.json"
    proc = run_torchrun(4, [str(TESTS / "torchrun" / "comm_check.py"), str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["size"] == 4
    failed = {k: v for k, v in result["checks"].items() if not v[0]}
    assert not failed, failed
    same = [k for k in result["checks"] if k.endswith("torch_equals_local")]
    assert len(same) == 3 * 6  # ring, complete, torus × six compressors
    for spec in ("sign", "topk:0.05", "randk:0.2", "qsgd:16"):
        assert f"ring:4/{spec}/torch_equals_local" in same
    assert {"collectives/allreduce_float64", "collectives/allreduce_float32",
            "collectives/allreduce_0d", "collectives/allgather", "collectives/broadcast",
            "collectives/allgather_object"} <= set(result["checks"])
    errors = result["errors"]
    assert errors["agree"] == [None] * 4
    assert errors["gossip_after"] == [None] * 4
    expected = {"config": ("AgreementError", "field 'topology' is 'ring:4' on ranks 0-1"),
                "tensors": ("AgreementError", "those of rank 3 differ"),
                "asymmetric": ("CommError", "rank 0 lists rank 3 as a neighbour but rank 3"),
                "invalid": ("CommError", "rank 2: neighbours must be distinct"),
                "lengths": ("CommError", "neighbours post gossip messages of different")}
    for case, (kind, text) in expected.items():
        per_rank = errors[case]
        assert all(e is not None for e in per_rank), (case, per_rank)  # raised on EVERY rank
        assert {e[0] for e in per_rank} == {kind}, (case, per_rank)
        assert len({e[1] for e in per_rank}) == 1, (case, per_rank)  # the same message
        assert text in per_rank[0][1], (case, per_rank[0][1])


def launch_failure(mode: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run fail_check.py MODE on 3 ranks; also return the seconds from the failure (the
    stamp a failing rank writes) to the end of the job."""
    stamp = tmp_path / "failed_at"
    proc = run_torchrun(3, [str(TESTS / "torchrun" / "fail_check.py"), mode, str(stamp)],
                        timeout=120)
    ended = time.time()
    return proc, ended - float(stamp.read_text()) if stamp.exists() else float("nan")


@pytest.mark.torchrun
@pytest.mark.slow
def test_a_failing_rank_ends_the_torchrun_job_with_its_error(tmp_path):
    proc, elapsed = launch_failure("raise", tmp_path)
    assert proc.returncode != 0
    err = worker_output(proc.stderr)
    assert err.count("RuntimeError: deliberate failure on rank 1") == 1, err
    assert "[rank 1] Traceback" in err
    # the ranks left waiting (a collective, an exchange) are ended, not reported
    assert "[rank 0]" not in err and "[rank 2]" not in err, err
    assert re.search(r"exitcode\s*:\s*1\b", proc.stderr)  # torchrun names the failed rank
    assert elapsed < END_WITHIN_S, elapsed


@pytest.mark.torchrun
@pytest.mark.slow
def test_check_agreement_under_torchrun_prints_the_error_once(tmp_path):
    proc, _ = launch_failure("agree", tmp_path)
    assert proc.returncode != 0
    err = worker_output(proc.stderr)
    assert err.count("error: ranks disagree on the run's configuration: field 'compressor' "
                     "is 'sign' on ranks 0-1 but 'topk:0.01' on rank 2") == 1, err
    assert "[rank" not in err, err  # no other rank reported it, no traceback
    assert re.search(r"exitcode\s*:\s*2\b", proc.stderr)  # the worker's status: usage error


@pytest.mark.torchrun
@pytest.mark.slow
def test_a_user_error_on_one_rank_ends_the_job(tmp_path):
    proc, elapsed = launch_failure("usage", tmp_path)
    assert proc.returncode != 0
    err = worker_output(proc.stderr)
    assert err.count("[rank 2] error: deliberate usage error on rank 2") == 1, err
    assert "[rank 0]" not in err and "[rank 1]" not in err, err
    assert re.search(r"exitcode\s*:\s*2\b", proc.stderr)
    assert elapsed < END_WITHIN_S, elapsed


@pytest.mark.torchrun
@pytest.mark.slow
def test_a_hung_rank_ends_the_job_after_the_timeout(tmp_path):
    """A rank alive but silent: its neighbours raise after the process group's timeout (3 s
    here, :data:`~choco.comm.torchdist.DEFAULT_TIMEOUT_S` by default); nothing waits
    forever."""
    proc, elapsed = launch_failure("hang", tmp_path)
    assert proc.returncode != 0
    err = worker_output(proc.stderr)
    assert "[rank 0] Traceback" in err and "Timed out" in err, err
    assert 3.0 <= elapsed < 3.0 + END_WITHIN_S, elapsed


# ------------------------------------------------------------------------------ in process
@pytest.fixture
def clean_env(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env,expected", [
    ({}, False),
    ({"TORCHELASTIC_RUN_ID": "abc"}, True),
    ({"TORCHELASTIC_RUN_ID": "abc", "PMI_SIZE": "2"}, True),  # srun starting torchrun
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, True),
    ({"RANK": "0", "WORLD_SIZE": "2"}, False),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, False),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "PMI_SIZE": "2"}, False),
    ({"PMI_SIZE": "4"}, False),
])
def test_launched_by_torchrun(clean_env, env, expected):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert launched_by_torchrun() is expected


def test_init_from_env_refuses_a_process_not_started_by_torchrun(clean_env):
    with pytest.raises(CommError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are "
                                        "not set; start the program with torchrun"):
        init_from_env()


@pytest.mark.parametrize("kwargs,match", [
    ({"backend": "mpi"}, "backend must be gloo, nccl or auto, got 'mpi'"),
    ({"device": "tpu"}, "device must be cpu, cuda or auto, got 'tpu'"),
    ({"timeout_s": 0}, "timeout must be a positive number of seconds, got 0"),
    ({"timeout_s": float("inf")}, "timeout must be a positive number"),
    ({"backend": "nccl", "device": "cpu"}, "nccl backend needs CUDA devices"),
])
def test_init_from_env_refuses_bad_settings(clean_env, kwargs, match):
    with pytest.raises(UsageError, match=re.escape(match)):
        init_from_env(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_init_from_env_refuses_cuda_without_a_gpu(clean_env):
    with pytest.raises(UsageError, match="no CUDA device"):
        init_from_env(device="cuda")


def test_choose_device(clean_env):
    """One device rule for every program: cpu, auto (cuda only when torch sees a GPU),
    cuda without a GPU refused, cuda:i only where a program allows it."""
    from choco.run.launch import choose_device

    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match=r"--device must be one of cpu, cuda or auto, got 'tpu'"):
        choose_device("tpu")
    with pytest.raises(UsageError, match=r"cpu, cuda, cuda:i or auto, got 'tpu'"):
        choose_device("tpu", indexed=True)
    with pytest.raises(UsageError, match=r"--device must be one of cpu, cuda or auto"):
        choose_device("cuda:0")  # an index only where the program takes one
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(UsageError, match="no CUDA device"):
                choose_device(name, indexed=True)


@pytest.mark.parametrize("env,backend", [
    ({}, "local"),
    ({"PMI_SIZE": "1"}, "local"),  # mpiexec -n 1 is one process: local
    ({"PMI_SIZE": "4", "PMI_RANK": "2"}, "mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "mpi"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "torch"),
    ({"TORCHELASTIC_RUN_ID": "x", "PMI_SIZE": "4"}, "torch"),  # srun starting torchrun
])
def test_resolve_backend_auto(clean_env, env, backend):
    from choco.run.launch import resolve_backend

    for k, v in env.items():
        clean_env.setenv(k, v)
    assert resolve_backend("auto") == backend
    assert resolve_backend("mpi") == "mpi"  # an explicit choice is kept
    with pytest.raises(UsageError, match="--backend must be one of auto, local, mpi, torch"):
        resolve_backend("gloo")


@pytest.mark.skipif(dist.is_initialized(), reason="a process group is initialized")
def test_communicator_needs_a_process_group():
    with pytest.raises(CommError, match=r"needs an initialized torch\.distributed process "
                                        r"group.*torchrun"):
        TorchCommunicator([])


def test_default_timeout_is_finite():
    assert 0 < DEFAULT_TIMEOUT_S < float("inf")


def test_importing_choco_comm_does_not_load_the_torch_backend():
    code = ("import sys, choco.run.launch as l; assert 'torch' not in sys.modules; "
            "assert l.run_torch and l.init_from_env and l.launched_by_torchrun; "
            "import choco.comm as c; assert 'choco.comm.torchdist' not in sys.modules; "
            "assert c.TorchCommunicator.__module__ == 'choco.comm.torchdist'\n"
            "try:\n    c.run_torch\nexcept AttributeError as e:\n    print(e)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    # the launch names moved to the run layer; the old ones say where
    assert "from choco.run.launch import run_torch" in proc.stdout


@pytest.fixture
def one_rank(clean_env):
    """A one-rank gloo process group in this process, set up as torchrun would."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        clean_env.setenv(k, v)
    launch = init_from_env(timeout_s=60)
    try:
        yield launch
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_one_rank_group(one_rank):
    launch = one_rank
    assert (launch.rank, launch.size, launch.backend, str(launch.device)) == (0, 1, "gloo",
                                                                             "cpu")
    assert init_from_env() == launch  # initialized once, then described
    comm = launch.communicator()
    assert comm.neighbors == [] and comm.all_neighbors == [[]]
    msg = torch.arange(10, dtype=torch.uint8)
    assert comm.neighbor_exchange(msg).wait() == []
    x = np.float64(1.5)
    assert np.shape(comm.allreduce(x)) == () and comm.allreduce(x) == 1.5  # 0-d stays 0-d
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(comm.allgather(a), a[None])
    assert np.array_equal(comm.broadcast(a), a)
    assert comm.allgather_object({"a": 1}) == [{"a": 1}]
    comm.barrier()
    with pytest.raises(CommError, match="1-D uint8 buffer"):
        comm.neighbor_exchange(torch.zeros(3))
    with pytest.raises(CommError, match="neighbours must be distinct ranks in"):
        TorchCommunicator([1])


def test_run_torch_on_one_rank_returns_the_status(one_rank, capsys):
    def bad() -> int:
        raise UsageError("deliberate")

    assert run_torch(bad) == 2
    assert capsys.readouterr().err == "error: deliberate\n"
    assert not dist.is_initialized()  # the process group is released


def test_run_torch_returns_mains_status(one_rank):
    assert run_torch(lambda: 0) == 0
    assert not dist.is_initialized()


GLOO_CLOSED = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
               "by peer [127.0.0.1]:1949. This is typically caused by a remote worker crashing.")


def test_peer_failures_are_told_from_the_programs_own_errors():
    from choco.run.launch.policy import _peer_failed

    assert _peer_failed(RuntimeError(GLOO_CLOSED)).startswith("[/pytorch/third_party/gloo")
    try:
        try:
            raise RuntimeError(GLOO_CLOSED)
        except RuntimeError as exc:
            raise ValueError("while gossiping") from exc
    except ValueError as exc:
        assert _peer_failed(exc) is not None  # found through the chain
    assert _peer_failed(ConnectionResetError("Connection reset by peer")) is None  # a download
    assert _peer_failed(RuntimeError("deliberate failure on rank 1")) is None
    assert _peer_failed(None) is None


class _Exited(Exception):
    pass


@pytest.mark.parametrize("case,status,text", [
    ("peer", 1, "[rank 1] stopped: another rank failed ([/pytorch/third_party/gloo/"),
    ("usage", 2, "[rank 1] error: deliberate\n"),
])
def test_run_torch_on_a_rank_of_a_job(clean_env, capsys, case, status, text):
    """A non-zero rank's own error gets its rank; a peer's death gets one line, no
    traceback (under torchrun the agent usually ends the process before either). Here
    without a process group: ``os._exit`` and the grace periods are stubbed."""
    import choco.run.launch.policy as td

    def fake_exit(code: int) -> None:
        raise _Exited(code)

    clean_env.setattr(td.os, "_exit", fake_exit)
    clean_env.setattr(td, "GRACE_SECONDS", 0.0)
    clean_env.setattr(td, "PEER_GRACE_SECONDS", 0.0)
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "3")

    def main() -> int:
        if case == "peer":
            raise RuntimeError(GLOO_CLOSED)
        raise UsageError("deliberate")

    with pytest.raises(_Exited) as info:
        run_torch(main)
    assert info.value.args == (status,)
    err = capsys.readouterr().err
    assert err.startswith(text), err
    assert "Traceback" not in err

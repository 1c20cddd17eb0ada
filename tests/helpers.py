"""Launch helpers and shared values for the tests (no tests here).

Every real launch of the suite goes through this module: :func:`run_mpi` (``mpiexec -n N``),
:func:`run_mpmd` (``mpiexec -n N1 ... : -n N2 ...``, different options per rank group),
:func:`run_torchrun` (``torchrun --standalone``), :func:`run_python` (one plain process), and
:func:`free_port` / :func:`free_ports` for daemons and process groups. Each launch has a
timeout, runs in the repository root with this tree first on ``PYTHONPATH`` (so a worktree
tests its own code, also inside ``mpiexec``/``torchrun`` ranks), ``OMP_NUM_THREADS=1``, and
without the launcher variables of an enclosing job.

Missing launchers (policy of :func:`unavailable`): the test is skipped, except when ``CI`` or
``CHOCO_REQUIRE_MPI`` is set (or ``CHOCO_REQUIRE_TORCHRUN`` / ``CHOCO_REQUIRE_SLURM`` for
that launcher alone), where a missing ``mpiexec``, ``torchrun`` or SLURM is a failure.

A test that launches a job must carry the matching marker (``mpi``, ``torchrun``, ``slurm``)
so that ``-m "not mpi"`` and the like leave it out; a launch from an unmarked test fails
with the marker to add (the current test is recorded by ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: seconds one ``mpiexec`` launch may take unless the test says otherwise
MPI_TIMEOUT = float(os.environ.get("CHOCO_MPI_TIMEOUT", "300"))
#: seconds one ``torchrun`` launch may take unless the test says otherwise
TORCHRUN_TIMEOUT = float(os.environ.get("CHOCO_TORCHRUN_TIMEOUT", "300"))
#: variables set by a launcher (torchrun, MPI, PMI) that must not leak from an enclosing job
#: into the jobs the tests start
LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")

#: the test being run (set by ``tests/conftest.py``), to check its markers at each launch
current_item: pytest.Item | None = None


# ------------------------------------------------------------------------------- policy
def required(kind: str) -> bool:
    """True if a missing launcher of ``kind`` (``"mpi"``, ``"torchrun"``, ``"slurm"``) must
    fail rather than skip: ``CI``, ``CHOCO_REQUIRE_MPI`` or ``CHOCO_REQUIRE_<KIND>`` set."""
    names = ("CI", "CHOCO_REQUIRE_MPI", f"CHOCO_REQUIRE_{kind.upper()}")
    return any(os.environ.get(name) for name in names)


def unavailable(kind: str, reason: str) -> NoReturn:
    """Skip the test because ``reason``, or fail if :func:`required` says so."""
    if required(kind):
        pytest.fail(f"{reason}, but CI requires the {kind} tests to run (CI or "
                    f"CHOCO_REQUIRE_MPI / CHOCO_REQUIRE_{kind.upper()} is set)")
    pytest.skip(reason)


def check_marked(marker: str, what: str) -> None:
    """Fail if the running test launches ``what`` without ``@pytest.mark.<marker>``."""
    item = current_item
    if item is not None and item.get_closest_marker(marker) is None:
        pytest.fail(f"{item.nodeid} launches {what} but is not marked "
                    f"@pytest.mark.{marker}; mark it (or its module: pytestmark) so that "
                    f"-m 'not {marker}' leaves it out")


def skip_slurm_if_asked(items: Sequence[pytest.Item]) -> None:
    """With ``CHOCO_SKIP_SLURM`` set (not ``0``), mark the ``slurm`` tests of ``items`` to be
    skipped, saying why (also under CI: leaving them out is then a choice)."""
    if os.environ.get("CHOCO_SKIP_SLURM", "") in ("", "0"):
        return
    skip = pytest.mark.skip(reason="CHOCO_SKIP_SLURM is set: the SLURM tests (which install "
                                   "slurm-wlm and munge and start SLURM daemons) are left out")
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(skip)


def launch_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a launched job: this one without :data:`LAUNCHER_VARS`, one
    OpenMP thread, unbuffered output, this tree first on ``PYTHONPATH``; then ``env``, whose
    ``PYTHONPATH`` (if any) is put in front of that path rather than replacing it."""
    extra = dict(env or {})
    out = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    path = [extra.pop("PYTHONPATH", ""), str(ROOT), os.environ.get("PYTHONPATH", "")]
    out.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in path if p))
    out.update(extra)
    return out


# ------------------------------------------------------------------------------- mpiexec
def mpiexec_path() -> str | None:
    """``mpiexec`` on ``PATH``, else the one next to this Python (the ``mpich`` wheel)."""
    exe = shutil.which("mpiexec")
    if exe is None:
        candidate = Path(sys.executable).parent / "mpiexec"
        exe = str(candidate) if candidate.exists() else None
    return exe


def mpiexec() -> str:
    """The ``mpiexec`` to use; skips (or fails under CI) without one."""
    check_marked("mpi", "mpiexec")
    exe = mpiexec_path()
    if exe is None:
        unavailable("mpi", "mpiexec not found (install the mpich wheel: pip install mpich "
                    "mpi4py)")
    return exe


def run_mpi(n: int, args: Sequence[str], timeout: float = MPI_TIMEOUT, module: bool = False,
            cwd: Path | None = None, script: bool = False,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n n python -m mpi4py ARGS`` (an exception on a rank aborts the job);
    ``python -m ARGS`` if ``module``, plain ``python ARGS`` if ``script``; ``env`` as in
    :func:`launch_env`."""
    exe = mpiexec()
    launcher = ["-m"] if module else [] if script else ["-m", "mpi4py"]
    cmd = [exe, "-n", str(n), sys.executable, *launcher, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=launch_env(env), cwd=cwd or ROOT)


def run_mpmd(groups: Sequence[tuple[int, Sequence[str]]], timeout: float = 120.0,
             cwd: Path | None = None, env: Mapping[str, str] | None = None,
             ) -> tuple[subprocess.CompletedProcess[str], float]:
    """``mpiexec -n N1 python ARGS1 : -n N2 python ARGS2 ...`` for ``groups`` of
    ``(N, ARGS)`` (ARGS follow ``python`` as given, e.g. ``["-m", "choco.train", ...]``);
    returns the process and the seconds from launch to exit."""
    cmd = [mpiexec()]
    for i, (n, args) in enumerate(groups):
        cmd += ([":"] if i else []) + ["-n", str(n), sys.executable, *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=launch_env(env), cwd=cwd or ROOT)
    return proc, time.monotonic() - start


# ------------------------------------------------------------------------------ torchrun
def torchrun_launcher() -> list[str] | None:
    """``torchrun`` next to this Python, else ``python -m torch.distributed.run``."""
    script = Path(sys.executable).parent / "torchrun"
    if script.exists():
        return [str(script)]
    if (torch.distributed.is_available()
            and importlib.util.find_spec("torch.distributed.run") is not None):
        return [sys.executable, "-m", "torch.distributed.run"]
    return None


def run_torchrun(n: int, args: Sequence[str], timeout: float = TORCHRUN_TIMEOUT,
                 cwd: Path | None = None, env: Mapping[str, str] | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node n ARGS`` (ARGS: ``SCRIPT ...`` or
    ``-m MODULE ...``); skips (or fails under CI) without torch.distributed."""
    check_marked("torchrun", "torchrun")
    launcher = torchrun_launcher()
    if launcher is None:
        unavailable("torchrun", "torchrun (torch.distributed) not available")
    cmd = [*launcher, "--standalone", "--nproc-per-node", str(n), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=launch_env(env), cwd=cwd or ROOT)


def worker_output(stderr: str) -> str:
    """stderr without torchrun's own log lines (``W1201 ...``, ``E1201 ...``)."""
    return "\n".join(line for line in stderr.splitlines()
                     if not re.match(r"[IWE]\d{4} \d", line))


# -------------------------------------------------------------------------------- others
def run_python(args: Sequence[str], timeout: float = 300, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a subprocess with a timeout (environment of :func:`launch_env`)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=launch_env(env), cwd=cwd or ROOT)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(count: int) -> int:
    """A port P with P, P + 1, ..., P + count - 1 all free on 127.0.0.1."""
    for _ in range(50):
        base = free_port()
        if base + count > 65000:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports found on 127.0.0.1 in 50 tries")


# --------------------------------------------------------------------- compressor values
#: CHOCO forms of every compressor family and combinator
SPECS = [
    "identity", "sign", "topk:0.1", "randk:0.1", "randblock:0.1", "natural", "dither:4",
    "qsgd:8", "dither:8:b=64", "qsgd:16:b=0", "topk:0.1+natural", "randk:0.2+qsgd:4",
    "randblock:0.3+dither:3", "topk:0.2+sign", "scaled(randk:0.1:raw)", "scaled(qsgd:2)",
    "topk:0.1:rice", "topk:0.05:rice+natural",
]
#: unbiased forms for DCD/ECD-PSGD
RAW_SPECS = [
    "randk:0.1:raw", "randblock:0.1:raw", "natural:raw", "dither:4:raw", "qsgd:8:raw",
    "randk:0.2:raw+natural:raw",
]


def randn(d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``d`` standard normal values from numpy's default generator with ``seed``."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(d)).to(dtype)


def k_of(ratio: float, d: int) -> int:
    """Entries a ratio-``ratio`` sparsifier keeps of ``d``: ``min(d, max(1, ⌈ratio·d⌉))``."""
    return min(d, max(1, math.ceil(ratio * d)))


# --------------------------------------------------------------------------- run folders
def rows(folder: Path) -> list[dict[str, Any]]:
    """The metric rows of a run folder, without the wall time."""
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def rank_state(folder: Path, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s state in the newest complete checkpoint generation of ``folder``."""
    from choco.run.checkpoint import find_latest

    gen = find_latest(folder)
    assert gen is not None, folder
    state: dict[str, Any] = torch.load(gen.path / f"rank{rank}.pt", weights_only=True)
    return state


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths at which two nested checkpoint structures differ (tensors: dtype or any bit)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        same = (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def hypercube_matrix(n: int, t: int) -> np.ndarray:
    """½(I + P) with P the permutation i ↦ i XOR 2^(t mod log₂ n), built from the rule."""
    hop = 1 << (t % (n.bit_length() - 1))
    W = 0.5 * np.eye(n)
    for i in range(n):
        W[i, i ^ hop] += 0.5
    return W

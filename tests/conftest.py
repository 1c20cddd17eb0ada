"""Shared fixtures: run real ``mpiexec`` launches with a timeout.

The parent pytest process never imports ``mpi4py.MPI``. Launches go through
``python -m mpi4py SCRIPT`` so that an exception on one rank aborts the job. Without
``mpiexec`` on PATH the MPI tests are skipped, except under CI (``CI`` or
``CHOCO_REQUIRE_MPI`` set), where a missing MPI is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
MPI_TIMEOUT = float(os.environ.get("CHOCO_MPI_TIMEOUT", "300"))


def mpiexec_path() -> str | None:
    exe = shutil.which("mpiexec")
    if exe is None:
        candidate = Path(sys.executable).parent / "mpiexec"
        exe = str(candidate) if candidate.exists() else None
    return exe


def run_mpi(n: int, args: list[str], timeout: float = MPI_TIMEOUT, module: bool = False,
            cwd: Path | None = None, script: bool = False, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m mpi4py ARGS``; ``python -m ARGS`` if ``module``, plain
    ``python ARGS`` if ``script``; ``env`` adds environment variables."""
    exe = mpiexec_path()
    if exe is None:
        if os.environ.get("CI") or os.environ.get("CHOCO_REQUIRE_MPI"):
            pytest.fail("mpiexec not found but CI requires the MPI tests to run")
        pytest.skip("mpiexec not found")
    launcher = ["-m"] if module else [] if script else ["-m", "mpi4py"]
    cmd = [exe, "-n", str(n), sys.executable, *launcher, *args]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or ROOT)


def run_python(args: list[str], timeout: float = 300, cwd: Path | None = None,
               ) -> subprocess.CompletedProcess:
    """``python ARGS`` in a subprocess with a timeout."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mpi: launches real mpiexec jobs")
    config.addinivalue_line("markers", "slow: takes more than ~10 s")

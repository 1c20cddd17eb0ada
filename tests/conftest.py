"""Suite-wide hooks: the test being run (for the launch helpers), ``CHOCO_SKIP_SLURM``.

The launch helpers and shared values are in ``tests/helpers.py``; test modules import them
from there (``from .helpers import run_mpi``), never from another test module. Markers,
the default per-test timeout and the test folder are set in ``setup.cfg`` (``[tool:pytest]``).

Tiers (markers): ``mpi`` (real ``mpiexec`` jobs), ``torchrun`` (real ``torchrun`` jobs),
``slurm`` (a private SLURM cluster on this machine: needs root, installs the Debian
packages slurm-wlm and munge when missing, starts munged, slurmctld and slurmd), ``slow``
(more than about 10 s on 2 cores). The quick subset::

    python -m pytest -q -m "not mpi and not torchrun and not slurm and not slow"

``CHOCO_SKIP_SLURM=1`` leaves the SLURM tests out of any selection (also under CI).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import helpers

# Transitional: test modules written before tests/helpers.py import these from here.
# New code imports them from .helpers.
from .helpers import ROOT, TESTS, mpiexec_path, run_mpi, run_python  # noqa: F401


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None,
                            ) -> Iterator[None]:
    """Record the running test (fixtures of wider scope are set up and torn down inside the
    protocol of the first and last test using them) for :func:`helpers.check_marked`."""
    helpers.current_item = item
    try:
        yield
    finally:
        helpers.current_item = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    helpers.skip_slurm_if_asked(items)

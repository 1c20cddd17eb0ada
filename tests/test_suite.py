"""The test suite's own rules: no test module imports another, launches are marked, and the
skip-or-fail policy for missing launchers (``tests/helpers.py``)."""

from __future__ import annotations

import ast
import os
import socket
from pathlib import Path

import pytest

from . import helpers
from .helpers import TESTS

MODULES = sorted(TESTS.glob("test_*.py"))


def imported_test_modules(path: Path) -> list[str]:
    """Names of test modules (``test_*``) or ``conftest`` that ``path`` imports."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".")
            names = [*base, *(a.name for a in node.names)] if node.level or base[0] == "tests" \
                else []
        elif isinstance(node, ast.Import):
            names = [part for a in node.names if a.name.startswith("tests.")
                     for part in a.name.split(".")]
        out += [n for n in names if n.startswith("test_") or n == "conftest"]
    return out


def test_the_import_check_sees_what_it_must(tmp_path):
    cases = {"from .test_compress import SPECS": ["test_compress"],
             "from .conftest import run_mpi": ["conftest"],
             "from . import test_resume": ["test_resume"],
             "import tests.test_resume": ["test_resume"],
             "from .helpers import SPECS": [], "from test_x import y": []}
    for source, expected in cases.items():
        path = tmp_path / "module.py"
        path.write_text(source + "\n")
        assert imported_test_modules(path) == expected, source


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_test_module_imports_another_test_module_or_conftest(path):
    assert imported_test_modules(path) == [], (
        f"{path.name} imports {imported_test_modules(path)}; shared values and launch "
        "helpers belong in tests/helpers.py")


def test_a_launch_from_an_unmarked_test_fails():
    with pytest.raises(pytest.fail.Exception, match=r"not marked @pytest.mark.mpi"):
        helpers.check_marked("mpi", "mpiexec")
    with pytest.raises(pytest.fail.Exception, match=r"-m 'not torchrun' leaves it out"):
        helpers.run_torchrun(2, ["-c", "pass"])


@pytest.mark.parametrize("env,required", [
    ({}, False), ({"CI": "1"}, True), ({"CHOCO_REQUIRE_MPI": "1"}, True),
    ({"CHOCO_REQUIRE_SLURM": "1"}, True), ({"CHOCO_REQUIRE_TORCHRUN": "1"}, False),
])
def test_missing_launcher_skips_except_under_ci(monkeypatch, env, required):
    for var in ("CI", "CHOCO_REQUIRE_MPI", "CHOCO_REQUIRE_SLURM", "CHOCO_REQUIRE_TORCHRUN"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert helpers.required("slurm") is required
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match="no slurmctld"):
        helpers.unavailable("slurm", "no slurmctld")


def test_launch_env_puts_this_tree_first_and_drops_launcher_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = helpers.launch_env({"PYTHONPATH": "/faults", "CHOCO_X": "1"})
    assert "RANK" not in env and "PMI_SIZE" not in env
    assert env["PYTHONPATH"].split(os.pathsep) == ["/faults", str(helpers.ROOT), "/elsewhere"]
    assert env["CHOCO_X"] == "1" and env["OMP_NUM_THREADS"] == "1"


def test_free_ports_are_consecutive_and_bindable():
    base = helpers.free_ports(3)
    sockets = []
    try:
        for port in range(base, base + 3):
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", port))  # raises if the port were taken
    finally:
        for s in sockets:
            s.close()


class _Item:
    """What the helpers use of a collected test: its markers."""

    nodeid = "tests/test_x.py::test_y"

    def __init__(self, marker: str | None) -> None:
        self.markers = [getattr(pytest.mark, marker).mark] if marker else []

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((m for m in self.markers if m.name == name), None)

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.markers.append(mark.mark)


def test_a_marked_test_passes_the_check(monkeypatch):
    monkeypatch.setattr(helpers, "current_item", _Item("mpi"))
    helpers.check_marked("mpi", "mpiexec")  # no failure
    with pytest.raises(pytest.fail.Exception, match="torchrun"):
        helpers.check_marked("torchrun", "torchrun")


@pytest.mark.parametrize("value,skipped", [("1", True), ("", False), ("0", False)])
def test_choco_skip_slurm_leaves_the_slurm_tests_out(monkeypatch, value, skipped):
    monkeypatch.setenv("CHOCO_SKIP_SLURM", value)
    slurm, other = _Item("slurm"), _Item(None)
    helpers.skip_slurm_if_asked([slurm, other])  # type: ignore[list-item]
    skip = slurm.get_closest_marker("skip")
    assert (skip is not None) is skipped
    assert skip is None or "CHOCO_SKIP_SLURM" in skip.kwargs["reason"]
    assert other.get_closest_marker("skip") is None

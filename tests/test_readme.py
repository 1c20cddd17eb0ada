"""The README's commands and library example run as written."""

from __future__ import annotations

import re

import pytest

from .conftest import ROOT, run_mpi

README = (ROOT / "README.md").read_text()


def code_after(marker: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", README, re.S)
    if match is None:
        pytest.fail(f"README has no python block after {marker}")
    return match.group(1)


@pytest.mark.mpi
def test_library_example_trains_under_mpiexec(tmp_path):
    script = tmp_path / "train_ring.py"
    script.write_text(code_after("<!-- library-example -->"))
    proc = run_mpi(4, [str(script)], timeout=240, script=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = {int(r): float(v) for r, v in re.findall(r"rank (\d+): loss ([\d.]+)", proc.stdout)}
    assert sorted(losses) == [0, 1, 2, 3]
    # the regression target has variance ~10 (||w_true||²); training must get far below it
    assert max(losses.values()) < 0.5, losses


def test_readme_setup_matches_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    block = re.search(r"## Set-up: two commands.*?```bash\n(.*?)```", README, re.S).group(1)
    install, test = block.strip().splitlines()
    assert install.startswith("pip install torch==2.13.0") and install.endswith("choco-train")
    assert test in ci  # CI runs the README's test command verbatim

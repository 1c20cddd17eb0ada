"""The README's commands and library example run as written."""

from __future__ import annotations

import re

import pytest

from .helpers import ROOT, run_mpi

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


def output_after(marker: str) -> list[str]:
    match = re.search(re.escape(marker) + r"\s*```\n(.*?)```", README, re.S)
    if match is None:
        pytest.fail(f"README has no output block after {marker}")
    return match.group(1).strip().splitlines()


EPOCH = re.compile(r"epoch +(?P<epoch>\d+)/(?P<epochs>\d+)  loss (?P<train_loss>[\d.]+)  "
                   r"acc\(x̄\) (?P<acc>[\d.]+)%  acc\(local\) (?P<local>[\d.]+)%  "
                   r"consensus (?P<cd>[\d.e+-]+)  sent (?P<mib>[\d.]+) MiB/node  "
                   r"lr (?P<lr>[\d.e+-]+)  (?P<time>[\d.]+)s")


@pytest.mark.slow
def test_readme_training_output_is_what_choco_train_prints(tmp_path, capsys):
    """The README's default-run lines: the tuner lines and epoch 1 are what the program prints
    now (same numbers), the last epoch line has the format the progress formatter makes."""
    from choco.run.tasks import ImageClassification
    from choco.run.train import main, progress_line

    lines = output_after("<!-- train-example-output -->")
    assert main(["--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert lines[:2] == printed[:2]  # "tuning gamma ..." and "gamma 1 (auto: ...)"
    first = EPOCH.fullmatch(lines[2])
    now = EPOCH.fullmatch(printed[2])
    assert first and now, (lines[2], printed[2])
    same = ("epoch", "train_loss", "acc", "local", "cd", "mib", "lr")
    assert [first[k] for k in same] == [now[k] for k in same]
    assert lines[-1] == printed[-1].replace(str(tmp_path / "run"), "runs/default")
    last = EPOCH.fullmatch(lines[-2])
    assert last is not None, lines[-2]
    row = {"epoch": int(last["epoch"]), "train_loss": float(last["train_loss"]),
           "test_accuracy": float(last["acc"]) / 100, "test_accuracy_local":
           float(last["local"]) / 100, "consensus_distance": float(last["cd"]),
           "bytes_sent": float(last["mib"]) * 2**20, "lr": float(last["lr"]),
           "wall_time_s": float(last["time"])}
    assert progress_line(row, int(last["epochs"]), ImageClassification.quality) == lines[-2]


def test_readme_consensus_output_is_what_the_program_prints(tmp_path, capsys, monkeypatch):
    """The README's consensus example, run as written: the same lines, the same numbers."""
    import numpy as np

    from choco.run.consensus import main

    monkeypatch.chdir(tmp_path)
    np.save("X0.npy", np.random.default_rng(0).standard_normal((8, 1000)))
    assert main(["--topology", "ring:8", "--compressor", "sign", "--gamma", "0.5", "--steps",
                 "500", "--init", "X0.npy", "--out", "out.npz"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    lines = output_after("<!-- consensus-example-output -->")
    assert lines[0] == printed[0] and lines[1] == printed[1]
    assert lines[2] == "..." and lines[3] == printed[-1]

"""Sweeps and reports without SLURM: grid expansion, names, skipping, resume, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from choco.run.config import TrainConfig
from choco.run.consensus import parse_args as consensus_args
from experiments.report import main as report
from experiments.sweep import load_sweep
from experiments.sweep import main as sweep

from .helpers import ROOT

TRAIN = """
kind = "train"
name = "tiny"
[base]
topology = "ring:4"
nodes = 4
epochs = 2
seed = 3
eval_local = false
compressor = "sign"
[grid]
algorithm = ["choco", "exact"]
[[runs]]
algorithm = "dcd"
compressor = "randk:0.1"
lr = 5.0
"""

CONSENSUS = """
kind = "consensus"
[base]
steps = 40
dim = 16
gamma = "auto"
[[cases]]
topology = "ring:6"
[[cases]]
topology = "complete:6"
[grid]
compressor = ["identity", "sign", "topk:0.5"]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_cases_and_runs_expand_without_duplicates(tmp_path):
    text = TRAIN.replace('algorithm = ["choco", "exact"]',
                         'algorithm = ["choco", "exact", "allreduce"]\nseed = [1, 2]')
    s = load_sweep(write(tmp_path, text))
    # choco × 2 seeds, exact × 2, allreduce × 2, plus the explicit dcd run (base seed 3)
    assert len(s.runs) == 7
    assert all("compressor" not in r.options for r in s.runs
               if r.options["algorithm"] in ("exact", "allreduce"))
    c = load_sweep(write(tmp_path, CONSENSUS, "c.toml"))
    assert [(r.options["topology"], r.options["compressor"]) for r in c.runs] == [
        (t, q) for t in ("ring:6", "complete:6") for q in ("identity", "sign", "topk:0.5")]


def test_names_are_stable_and_follow_the_options(tmp_path):
    a = [r.name for r in load_sweep(write(tmp_path, TRAIN)).runs]
    assert a == [r.name for r in load_sweep(write(tmp_path, TRAIN, "again.toml")).runs]
    assert len(set(a)) == len(a) and a[0].startswith("choco_sign_")
    changed = [r.name for r in load_sweep(write(tmp_path, TRAIN.replace("seed = 3",
                                                                        "seed = 4"))).runs]
    assert not set(a) & set(changed)  # every run's options changed, so every name did


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _two_values(name: str, default, tmp_path: Path) -> tuple:
    """Two different valid values of an option, from its default's type alone."""
    if name == "data_dir":
        return str(tmp_path), str(tmp_path / "other")
    if name == "algorithm":  # both use the compressor and γ, so nothing else drops out
        return "choco", "dcd"
    if isinstance(default, bool):
        return True, False
    if isinstance(default, tuple):
        return (1,), (2,)
    if isinstance(default, int | float):
        return default + 1, default + 2
    if name == "topology":
        return "ring:4", "ring:5"
    return "0.5", "0.25"  # any string: gamma, compressor spec, model name, ... are checked later


def _single_run_name(tmp_path: Path, kind: str, name: str, value) -> str:
    text = f'kind = "{kind}"\n[base]\n{name} = {_toml(value)}\n'
    runs = load_sweep(write(tmp_path, text, f"{kind}-{name}.toml")).runs
    assert len(runs) == 1
    return runs[0].name


#: what the sweep sets for every run itself (a sweep file may not set them)
SWEEP_SETS = {"out", "resume", "overwrite", "backend", "json", "quiet", "config"}


def test_every_train_option_enters_the_run_name(tmp_path):
    """A finished run is found by name: if changing an option kept the name, a re-run with
    (say) more epochs would skip the old run as finished. The options come from the
    configuration dataclass, so a new field is covered without editing this test."""
    (tmp_path / "other").mkdir()
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name not in SWEEP_SETS]
    assert {"epochs", "seed", "lr", "topology", "compressor"} <= {f.name for f in fields}
    same = []
    for f in fields:
        a, b = _two_values(f.name, f.default, tmp_path)
        if _single_run_name(tmp_path, "train", f.name, a) == \
                _single_run_name(tmp_path, "train", f.name, b):
            same.append(f.name)
    assert not same, f"changing these options keeps the run's name: {same}"


def test_every_consensus_option_enters_the_run_name(tmp_path):
    """The same for consensus sweeps, over the options of the consensus program's parser."""
    options = {k: v for k, v in vars(consensus_args([])).items() if k not in SWEEP_SETS}
    assert {"steps", "dim", "seed", "gamma", "topology"} <= set(options)
    same = []
    for name, default in options.items():
        if name == "init":  # a file of X0 (default none): two different paths
            a, b = "a.npy", "b.npy"
        else:
            a, b = _two_values(name, default, tmp_path)
        if _single_run_name(tmp_path, "consensus", name, a) == \
                _single_run_name(tmp_path, "consensus", name, b):
            same.append(name)
    assert not same, f"changing these options keeps the run's name: {same}"


@pytest.fixture(scope="module")
def train_sweep(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sweep")
    path = write(folder, TRAIN)
    out = folder / "out"
    assert sweep([str(path), "--out", str(out), "--jobs", "2"]) == 0
    return path, out


@pytest.mark.slow
def test_sweep_runs_skips_finished_and_keeps_diverged_as_a_result(train_sweep, capsys):
    path, out = train_sweep
    results = {r.name: json.loads((out / r.name / "result.json").read_text())
               for r in load_sweep(path).runs}
    assert sorted(r["status"] for r in results.values()) == ["diverged", "finished",
                                                             "finished"]
    assert sweep([str(path), "--out", str(out)]) == 0
    assert "3 finished already, running 0" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint(train_sweep, tmp_path):
    path, out = train_sweep
    run = load_sweep(path).runs[0]
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    finished = (copy / run.name / "metrics.jsonl").read_text()
    (copy / run.name / "result.json").unlink()  # as if killed after its last checkpoint
    assert sweep([str(path), "--out", str(copy), "--index", "0"]) == 0
    commands = [line for line in (copy / run.name / "log.txt").read_text().splitlines()
                if line.startswith("$ ")]
    assert "--resume" in commands[-1] and "--resume" not in commands[0]
    assert (copy / run.name / "metrics.jsonl").read_text() == finished


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                          p.read_bytes() if p.is_file() else None)
            for p in [folder, *sorted(folder.rglob("*"))]}


@pytest.mark.slow
def test_index_on_a_finished_run_touches_nothing(train_sweep, tmp_path, capsys):
    """What each SLURM array task runs: on a finished (or diverged) run it returns 0 at once
    and changes no file or folder (no new log line, no manifest rewrite, no re-run)."""
    path, out = train_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)  # copy2 keeps the modification times
    before = _snapshot(copy)
    for index in range(len(load_sweep(path).runs)):
        assert sweep([str(path), "--out", str(copy), "--index", str(index)]) == 0
        assert _snapshot(copy) == before, f"--index {index} changed the output folder"
    assert "FAILED" not in capsys.readouterr().out


@pytest.mark.slow
def test_report_table_csv_and_plots(train_sweep, capsys):
    _, out = train_sweep
    assert report([str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| algorithm | compressor | lr | final acc x̄ %")
    assert len(table) == 2 + 3 and any("diverged (epoch" in line for line in table)
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert {r["algorithm"] for r in rows} == {"choco", "exact", "dcd"}
    plots = json.loads((out / "plots.json").read_text())
    assert set(plots) == {"accuracy_vs_epoch.png", "accuracy_vs_bytes.png"}
    assert sorted(plots["accuracy_vs_epoch.png"]["ring:4"]) == sorted(
        ["choco sign", "exact", "dcd randk:0.1 lr=5.0"])
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_consensus_sweep_and_report(tmp_path, capsys):
    path = write(tmp_path, CONSENSUS)
    out = tmp_path / "out"
    assert sweep([str(path), "--out", str(out), "--jobs", "2"]) == 0
    assert report([str(out), "--target-reduction", "100"]) == 0
    table = capsys.readouterr().out
    assert table.count("| ring:6 |") == 3 and table.count("| complete:6 |") == 3
    rows = {(r["topology"], r["compressor"]): r
            for r in csv.DictReader((out / "runs.csv").open())}
    # exact gossip on the complete graph averages in one round (W = 11ᵀ/n)
    assert float(rows[("complete:6", "identity")]["error_final"]) < 1e-20
    # larger spectral gap, faster exact gossip: the complete graph beats the ring
    assert float(rows[("complete:6", "identity")]["reduction"]) > \
        float(rows[("ring:6", "identity")]["reduction"])
    plots = json.loads((out / "plots.json").read_text())
    assert sorted(plots["error_vs_bytes.png"]) == ["complete:6", "ring:6"]
    assert sorted(plots["error_vs_steps.png"]["ring:6"]) == ["identity", "sign", "topk:0.5"]


@pytest.mark.parametrize("text,needle", [
    (TRAIN.replace("epochs = 2", "epoch = 2"), "unknown key 'epoch' in [base] (did you mean "
                                                "'epochs'?)"),
    (TRAIN.replace('algorithm = ["choco", "exact"]', "algorithm = []"), "empty list"),
    (TRAIN.replace("epochs = 2", 'epochs = "two"'), "--epochs must be a whole number"),
    (TRAIN + '\n[slurm]\nntasks = 8\n', "ring:4 has 4 nodes"),
    (TRAIN.replace("epochs = 2", 'epochs = 2\ndata_dir = "/nonexistent/cifar"'),
     "is not a folder"),
    (TRAIN.replace('kind = "train"', 'kind = "trian"'), "kind must be one of"),
    (TRAIN.replace("[grid]", "[gird]"), "did you mean 'grid'"),
    (TRAIN.replace("epochs = 2", "out = 'x'"), "sets 'out'"),
    ("not = [toml", "is not valid TOML"),
])
def test_bad_sweep_files_are_one_error_before_anything_runs(tmp_path, capsys, text, needle):
    path = write(tmp_path, text)
    out = tmp_path / "out"
    assert sweep([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert not out.exists()


def test_shipped_configs_parse(tmp_path):
    """Every shipped sweep file loads; the paper ones once their data folder exists."""
    for path in sorted((ROOT / "experiments" / "configs").glob("*.toml")):
        text = path.read_text().replace('data_dir = "data"', f'data_dir = "{tmp_path}"')
        assert load_sweep(write(tmp_path, text, path.name)).runs, path


@pytest.mark.slow
def test_report_factor_against_a_baseline(train_sweep, capsys):
    _, out = train_sweep
    assert report([str(out), "--target-accuracy", "0.5", "--baseline", "algorithm=exact",
                   "--no-plots"]) == 0
    table = capsys.readouterr().out
    assert "× fewer bytes to target" in table.splitlines()[0]
    rows = {r["algorithm"]: r for r in csv.DictReader((out / "runs.csv").open())}
    assert float(rows["exact"]["factor"]) == 1.0
    # a sign message is ~1/32 of an fp32 one: to the same accuracy, far fewer bytes
    assert float(rows["choco"]["factor"]) > 10
    assert report([str(out), "--baseline", "algorithm=nothing", "--no-plots"]) == 2

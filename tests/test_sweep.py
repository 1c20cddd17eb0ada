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
    if name == "network":  # parsed when the sweep file is read
        return "bandwidth=1g", "bandwidth=10g"
    if name == "outer":
        return "sgd:lr=1", "sgd:lr=0.5"
    if name == "momentum_mode":
        return "local", "quasi-global"
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
    # --threads only chooses how the in-process nodes are driven (byte-identical results,
    # tests/test_consensus_lockstep.py), so it is not a sweep option
    options = {k: v for k, v in vars(consensus_args([])).items()
               if k not in SWEEP_SETS | {"threads"}}
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
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| algorithm | compressor | lr | final acc x̄ %")
    assert len(table) == 2 + 3 and any("diverged (epoch" in line for line in table)
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert {r["algorithm"] for r in rows} == {"choco", "exact", "dcd"}
    plots = json.loads((out / "plots.json").read_text())
    assert set(plots) == {"accuracy_vs_epoch.png", "accuracy_vs_bytes.png"}
    diverged = json.loads(next(out.glob("dcd_*/result.json")).read_text())["summary"]["epoch"]
    assert sorted(plots["accuracy_vs_epoch.png"]["ring:4"]) == sorted(
        ["choco sign", "exact", f"dcd randk:0.1 lr=5.0 (diverged in epoch {diverged}, ×)"])
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


# --- --set, --dry-run with missing data, [slurm] options, shipped configs, installed tools

def test_set_changes_the_runs_options_and_names(tmp_path, capsys):
    path = write(tmp_path, TRAIN)
    plain = load_sweep(path).runs
    changed = load_sweep(path, ["epochs=5", "partition=by-class"]).runs
    assert [r.options["epochs"] for r in plain] == [2] * len(plain)
    assert [r.options["epochs"] for r in changed] == [5] * len(plain)
    assert {r.options["partition"] for r in changed} == {"by-class"}
    # the same runs with other options: every name is new (a finished run is not reused)
    assert len(changed) == len(plain) and not {r.name for r in plain} & {r.name for r in changed}
    # setting the value the file already has changes nothing
    assert [r.name for r in load_sweep(path, ["epochs=2"]).runs] == [r.name for r in plain]
    # the exact commands carry the new value
    assert sweep([str(path), "--out", str(tmp_path / "out"), "--dry-run", "--set",
                  "epochs=5", "--set", "partition=by-class"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(changed)
    for line, run in zip(lines, changed, strict=True):
        assert line.startswith(f"[{run.index}] {run.name} (new): ")
        assert " --epochs 5 " in line and " --partition by-class " in line
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize("item,needle", [
    ("epoch=5", "unknown key 'epoch' in --set (did you mean 'epochs'?)"),
    ("epochs=two", "--epochs must be a whole number"),
    ("algorithm=exact", "sets algorithm in [grid]"),
    ("epochs", "--set takes KEY=VALUE"),
    ("out=elsewhere", "sets 'out'"),
])
def test_bad_set_is_one_error(tmp_path, capsys, item, needle):
    assert sweep([str(write(tmp_path, TRAIN)), "--dry-run", "--set", item]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_dry_run_prints_the_plan_and_warns_about_missing_data(tmp_path, capsys):
    text = TRAIN.replace("epochs = 2", 'epochs = 2\ndata_dir = "no-such-folder"')
    path = write(tmp_path, text)
    runs = load_sweep(path).runs
    assert sweep([str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    plan = captured.out.splitlines()
    assert [line.split()[1] for line in plan[1:]] == [r.name for r in runs]
    warning = captured.err.strip()
    assert warning.startswith("warning: ") and "\n" not in warning
    assert f"{len(runs)} of {len(runs)} runs (runs 0-{len(runs) - 1}:" in warning
    assert all(r.name in warning for r in runs) and "'no-such-folder'" in warning
    # a real run refuses it before running anything; --set points the runs at the data
    assert sweep([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "--set data_dir=" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert sweep([str(path), "--dry-run", "--set", f"data_dir={tmp_path}"]) == 0
    assert capsys.readouterr().err == ""


def test_every_shipped_config_prints_its_plan(tmp_path, capsys):
    configs = sorted((ROOT / "experiments" / "configs").glob("*.toml"))
    assert len(configs) >= 5
    for path in configs:
        from experiments.sweepfile import _toml

        data = _toml().loads(path.read_text())
        assert sweep([path.stem, "--dry-run", "--out", str(tmp_path / path.stem)]) == 0, path
        out = capsys.readouterr().out.splitlines()
        program = "choco.consensus" if data.get("kind") == "consensus" else "choco.train"
        runs = [line for line in out if line.startswith("[")]
        assert out[0].startswith(f"{data.get('name', path.stem)}: {len(runs)} ") and runs
        assert [int(line[1:line.index("]")]) for line in runs] == list(range(len(runs)))
        assert all(f" -m {program} " in line for line in runs), path
        # at least as many runs as the explicit [[runs]] and the largest [grid] list
        grid = max((len(v) for v in data.get("grid", {}).values()), default=1)
        assert len(runs) >= max(grid, len(data.get("runs", []))), path


def test_slurm_table_becomes_the_sbatch_command(tmp_path, capsys):
    import shlex

    text = TRAIN + """
[slurm]
ntasks = 1
cpus_per_task = 4
time = "02:00:00"
partition = "gpu"
account = "proj123"
qos = "high"
gres = "gpu:1"
gpus_per_task = 1
sbatch = ["--constraint=a100", "--exclusive", "--mail-type=END"]
"""
    path = write(tmp_path, text)
    out = tmp_path / "out"
    assert sweep([str(path), "--out", str(out), "--launcher", "slurm", "--dry-run",
                  "--set", "epochs=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cmd = shlex.split(lines[-1])
    script = cmd.index(str(ROOT / "slurm" / "sweep.sbatch"))
    options = cmd[1:script]
    assert cmd[0] == "sbatch" and "--parsable" in options
    assert {"--array=0-2", "--ntasks=1", "--cpus-per-task=4", "--time=02:00:00",
            "--partition=gpu", "--account=proj123", "--qos=high", "--gres=gpu:1",
            "--gpus-per-task=1"} <= set(options)
    # the pass-through options come last and in order (sbatch keeps the last value)
    assert options[-3:] == ["--constraint=a100", "--exclusive", "--mail-type=END"]
    # every array task expands the sweep with the same --set, so the indices match
    assert cmd[script + 1:] == [str(path.resolve()), str(out.resolve()), "--set", "epochs=3"]
    assert len([line for line in lines if line.startswith("[")]) == 3


@pytest.mark.parametrize("table,needle", [
    ('acount = "x"', "unknown key 'acount' in [slurm] (did you mean 'account'?)"),
    ("gpus_per_task = true", "[slurm].gpus_per_task must be a whole number or a string"),
    ('sbatch = "--exclusive"', "[slurm].sbatch must be a list of strings"),
    ('sbatch = ["--array=0-3"]', "which the sweep sets itself"),
    ('sbatch = ["exclusive"]', "start with '-'"),
    ("qos = 3", "[slurm].qos must be a string"),
])
def test_bad_slurm_tables(tmp_path, capsys, table, needle):
    assert sweep([str(write(tmp_path, TRAIN + f"\n[slurm]\n{table}\n")), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


@pytest.mark.slow
def test_installed_tools_work_from_any_folder(tmp_path):
    """pip-install the project into a fresh folder; from a folder outside the checkout the
    console scripts and the ``python -m`` forms run, with the installed experiments/configs."""
    import importlib.util
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    for name in ("choco", "topologies", "experiments"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "netns"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    target = tmp_path / "site"
    offline = importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
           *(["--no-build-isolation"] if offline else []), str(src)]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (target / "experiments" / "configs" / "small_ring8.toml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        p = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=elsewhere,
                           env=env)
        assert p.returncode == 0, (args, p.stderr[-2000:])
        return p

    for tool in ("choco-sweep", "choco-report"):
        assert run([str(target / "bin" / tool), "--version"]).stdout.startswith(
            f"{tool} (choco ")
    for module in ("experiments.sweep", "experiments.report"):
        assert f"python -m {module} (choco " in run([sys.executable, "-m", module,
                                                      "--version"]).stdout
    where = run([sys.executable, "-c", "import experiments; print(experiments.__file__)"])
    assert where.stdout.strip().startswith(str(target))
    plan = run([str(target / "bin" / "choco-sweep"), "small_ring8", "--dry-run"]).stdout
    assert plan.startswith("small_ring8: 9 train runs from " + str(target))

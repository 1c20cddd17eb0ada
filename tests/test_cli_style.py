"""One command-line style for every program (issue 22 items 7, 8 and 9).

Each program is run in this process with ``--help``, ``--version`` or a bad command line;
its parser is captured by wrapping :meth:`choco.run.cli.ArgumentParser.parse_args`, so a
program that builds another kind of parser is caught too (nothing is captured).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable

import numpy as np
import pytest

from choco import __version__
from choco.run import cli, compress_cli, consensus, topologies_cli, train, tuning_cli
from choco.run.bench import main as bench_main
from choco.run.launch import launch_command
from experiments import equal_bytes, readme_tables, report, sweep, timevarying_table

from .helpers import run_torchrun, worker_output

#: program -> (its main, the prefix of argv that selects it, its name in usage)
PROGRAMS: dict[str, tuple[Callable[[list[str]], int], list[str], str]] = {
    "choco-train": (train.main, [], "python -m choco.train"),
    "choco-consensus": (consensus.main, [], "python -m choco.consensus"),
    "choco.compress": (compress_cli.main, [], "python -m choco.compress"),
    "choco.tuning": (tuning_cli.main, [], "python -m choco.tuning"),
    "topologies": (topologies_cli.main, [], "python -m topologies"),
    "choco.bench": (bench_main, [], "python -m choco.bench"),
    "bench compressors": (bench_main, ["compressors"], "python -m choco.bench compressors"),
    "bench gossip": (bench_main, ["gossip"], "python -m choco.bench gossip"),
    "bench train": (bench_main, ["train"], "python -m choco.bench train"),
    "bench delta": (bench_main, ["delta"], "python -m choco.bench delta"),
    "bench whatif": (bench_main, ["whatif"], "python -m choco.bench whatif"),
    "bench scaling": (bench_main, ["scaling"], "python -m choco.bench scaling"),
    "choco-sweep": (sweep.main, [], "python -m experiments.sweep"),
    "choco-report": (report.main, [], "python -m experiments.report"),
    "equal_bytes": (equal_bytes.main, [], "python -m experiments.equal_bytes"),
    "timevarying_table": (timevarying_table.main, [],
                          "python -m experiments.timevarying_table"),
    "readme_tables": (readme_tables.main, [], "python -m experiments.readme_tables"),
}


@pytest.fixture
def parsers(monkeypatch) -> list[argparse.ArgumentParser]:
    """Every parser of the one class that parses a command line during the test."""
    seen: list[argparse.ArgumentParser] = []
    original = cli.ArgumentParser.parse_known_args

    def record(self, *args, **kwargs):
        seen.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cli.ArgumentParser, "parse_known_args", record)
    return seen


def call(name: str, argv: list[str]) -> int:
    main, prefix, _ = PROGRAMS[name]
    try:
        return main([*prefix, *argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def option_entries(text: str) -> list[str]:
    """The option entries of a --help text: each starts with an indented ``-`` line."""
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^ {2}-", line):
            entries.append(line)
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
        elif not line.strip():
            entries.append("")  # a blank line ends an entry
    return [e for e in entries if e]


@pytest.mark.parametrize("name", PROGRAMS)
def test_help_is_in_the_one_style(name, parsers, capsys):
    assert call(name, ["--help"]) == 0
    text = capsys.readouterr().out
    prog = PROGRAMS[name][2]
    assert text.startswith(f"usage: {prog} "), text[:200]
    assert parsers, f"{name} does not parse with choco.run.cli.ArgumentParser"
    parser = parsers[-1]
    assert isinstance(parser.formatter_class(prog), cli.HelpFormatter)
    # defaults shown once, and only real ones
    assert "(default: None)" not in text and "(default: False)" not in text
    entries = option_entries(text)
    assert len(entries) >= 2  # at least --help and --version
    for entry in entries:
        assert entry.count("(default") <= 1, entry
    # every option (and positional) has a description
    for action in parser._actions:
        if action.help is argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help and action.help.strip(), (name, action.option_strings or action.dest)
    assert "--version" in parser._option_string_actions


@pytest.mark.parametrize("name", PROGRAMS)
def test_version_names_the_program(name, capsys):
    assert call(name, ["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{PROGRAMS[name][2]} (choco {__version__})"


def short_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "usage:" not in err
    return err


@pytest.mark.parametrize("name", ["choco-train", "choco-consensus", "choco.tuning",
                                  "bench gossip"])
def test_a_flag_typo_gets_a_short_did_you_mean(name, capsys):
    assert call(name, ["--topolgy", "ring:8"]) == 2
    err = short_error(capsys)
    assert "--topolgy" in err and "did you mean --topology?" in err


def test_a_typo_far_from_every_option_names_it_without_a_guess(capsys):
    assert call("choco-consensus", ["--zzzzzz"]) == 2
    err = short_error(capsys)
    assert "the unknown '--zzzzzz'" in err and "did you mean" not in err


def test_a_subcommand_or_choice_typo_gets_did_you_mean(capsys):
    assert call("choco.bench", ["gosip"]) == 2
    assert "did you mean gossip?" in short_error(capsys)
    assert call("choco-consensus", ["--backend", "mpii"]) == 2
    assert "did you mean mpi?" in short_error(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["--topology", "rnig:8"], "did you mean ring:8?"),
    (["--compressor", "top-k:0.01"], "did you mean 'topk'?"),
    (["--compressor", "topk:0.01+natral"], "did you mean 'natural'?"),
    (["--mixing", "metropolys"], "did you mean metropolis?"),
])
@pytest.mark.parametrize("name", ["choco-train", "choco-consensus"])
def test_spec_typos_get_did_you_mean(name, argv, needle, capsys, tmp_path):
    out = tmp_path / ("run" if name == "choco-train" else "c.npz")
    assert call(name, [*argv, "--out", str(out), "--gamma", "0.5", "--quiet"]) == 2
    assert needle in short_error(capsys)
    assert not out.exists()


@pytest.fixture
def x_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    return path


def test_compress_json_prints_exactly_one_json_line(x_file, tmp_path, capsys):
    base = ["topk:0.1", "--in", str(x_file)]
    assert call("choco.compress", [*base, "--out", str(tmp_path / "a.npy"), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    with_json = json.loads(lines[0])
    assert call("choco.compress", [*base, "--out", str(tmp_path / "b.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # a readable line, then the same JSON summary, last
    assert json.loads(lines[-1]) == with_json
    assert f"{with_json['nbytes']:,} bytes" in lines[0]


@pytest.mark.parametrize("env, expected", [
    ({}, "mpiexec -n 8"),
    ({"TORCHELASTIC_RUN_ID": "job"}, "torchrun --nproc-per-node 8"),
    ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, "torchrun --nproc-per-node 8"),
    ({"SLURM_STEP_NUM_TASKS": "4"}, "srun --ntasks 8"),
])
def test_rank_count_hints_name_the_launcher_in_use(monkeypatch, env, expected):
    for var in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                "SLURM_STEP_NUM_TASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE",
                "MPI_LOCALNRANKS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert launch_command(8) == expected
    from choco.errors import UsageError
    from choco.run.plan import resolve_topology

    with pytest.raises(UsageError) as info:
        resolve_topology("ring:8", "metropolis", 4, mpi=True)
    assert f"launch {expected}," in str(info.value)
    other = {"mpiexec -n 8", "torchrun --nproc-per-node 8", "srun --ntasks 8"} - {expected}
    assert not any(o in str(info.value) for o in other)


@pytest.mark.torchrun
def test_torchrun_rank_mismatch_hint_says_nproc_per_node():
    proc = run_torchrun(2, ["-m", "choco.consensus", "--topology", "ring:4", "--gamma",
                            "0.5", "--steps", "1", "--quiet"], timeout=240)
    err = worker_output(proc.stderr)
    assert proc.returncode != 0
    assert "torchrun --nproc-per-node 4" in err and "mpiexec" not in err, err

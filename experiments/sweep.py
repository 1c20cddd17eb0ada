"""Sweeps: a base configuration × a grid of options, run locally or as a SLURM job array.

    python -m experiments.sweep SWEEP.toml [--launcher local|slurm] [--out DIR] [--jobs J]
                                           [--dry-run] [--index I]

A sweep file (TOML)::

    kind = "train"                 # a choco-train run per grid point, or "consensus"
    [base]                         # options of every run (the program's option names)
    topology = "ring:8"
    epochs = 20
    [grid]                         # every value a list: the runs are the cartesian product
    algorithm = ["choco", "exact"]
    compressor = ["sign", "topk:0.01"]
    [[cases]]                      # optional: option sets that go together, each crossed
    topology = "ring:8"            # with the grid (a case's options win over the grid's),
                                   # e.g. a graph and its mixing rule
    [[cases]]
    topology = "social"
    mixing = "maxdegree"
    [[runs]]                       # optional extra runs (not a product), each over the base
    algorithm = "allreduce"
    [slurm]                        # optional: sbatch settings of --launcher slurm
    ntasks = 1                     # tasks per array task (> 1: each run under srun, MPI)
    time = "01:00:00"

Options that an algorithm does not use (``compressor`` for exact, allreduce and local, γ for
all but choco) are dropped, so a grid never runs the same run twice. Each run is named from
the options that vary (``algorithm=choco,compressor=topk:0.01`` → ``choco_topk0.01``) plus an
8-character hash of all its options: stable, so re-running a sweep finds its finished runs
(``DIR/NAME/result.json``) and skips them, and resumes interrupted ones from their checkpoint.
A diverged run (choco-train exit 3) is a result, not a failure. ``--index I`` runs only run
I: what each task of the SLURM array (slurm/sweep.sbatch) does.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from choco.errors import UsageError
from choco.run.algorithms import ALGORITHMS
from choco.run.cli import DIVERGED_EXIT, ArgumentParser, prog_name, run_local
from choco.run.config import FIELDS, _convert

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("train", "consensus")
#: consensus options a sweep may set, with their types
CONSENSUS_OPTIONS: dict[str, type] = {
    "topology": str, "mixing": str, "compressor": str, "gamma": str, "steps": int,
    "dim": int, "seed": int, "init": str, "network": str,
}
#: choco-train options the sweep itself sets for every run
RESERVED = {"out", "resume", "overwrite", "backend", "json", "quiet"}
SLURM_KEYS = {"ntasks": int, "cpus_per_task": int, "time": str, "partition": str,
              "mem": str}
TOP_KEYS = {"kind", "name", "base", "grid", "cases", "runs", "slurm", "description"}


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its index, stable name and options."""

    index: int
    name: str
    options: dict[str, Any]


@dataclass
class Sweep:
    """A parsed, validated sweep file."""

    path: Path
    kind: str
    name: str
    runs: list[Run]
    slurm: dict[str, Any] = field(default_factory=dict)


def _closest(key: str, valid: list[str], where: str, path: Path) -> UsageError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{path}: unknown key {key!r} in {where}{hint}; valid keys: "
                      f"{', '.join(sorted(valid))}.")


def _check_option(kind: str, key: str, value: Any, where: str, path: Path) -> Any:
    name = key.replace("-", "_")
    valid = list(FIELDS) if kind == "train" else list(CONSENSUS_OPTIONS)
    if name not in valid:
        raise _closest(key, valid, where, path)
    if name in RESERVED:
        raise UsageError(f"{path}: {where} sets {key!r}, which the sweep sets for every run "
                         "itself; remove it.")
    if kind == "train":
        try:
            return _convert(name, value)
        except UsageError as exc:
            raise UsageError(f"{path}: {where}: {exc}") from None
    if name == "network":  # a string or a TOML table, checked now
        from choco.sim.spec import network_text

        try:
            return network_text(value if isinstance(value, dict) else str(value))
        except UsageError as exc:
            raise UsageError(f"{path}: {where}: {exc}") from None
    if CONSENSUS_OPTIONS[name] is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{path}: {where}.{key} must be a whole number, got {value!r}.")
    return str(value) if CONSENSUS_OPTIONS[name] is str else value


def _normalize(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Drop what the run's algorithm does not use (so the grid has no duplicates)."""
    if kind != "train":
        return options
    algorithm = ALGORITHMS.get(str(options.get("algorithm", "choco")))
    if algorithm is None:
        raise UsageError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got "
                         f"{options.get('algorithm')!r}.")
    out = dict(options)
    if not algorithm.needs_compressor:
        out.pop("compressor", None)
    if not algorithm.uses_gamma:
        out.pop("gamma", None)
    return out


def _short(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "", text.replace(":", "").replace("/", "-"))[:40]


def run_name(options: dict[str, Any], varying: list[str]) -> str:
    """``algo_spec..._HASH``: readable varying values and a hash of every option."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    parts = [_short(options[k]) for k in varying if k in options]
    return "_".join([*(p for p in parts if p), digest.hexdigest()[:8]])


def load_sweep(path: Path) -> Sweep:
    """Parse and validate a sweep file; every error names the file, the key and the fix."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"the sweep file must exist, got {path} (not found); see "
                         "experiments/configs/ for examples.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML ({exc}); fix the line it names.") from None
    for key in data:
        if key not in TOP_KEYS:
            raise _closest(key, sorted(TOP_KEYS), "the top level", path)
    kind = data.get("kind", "train")
    if kind not in KINDS:
        raise UsageError(f"{path}: kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    base = {k.replace("-", "_"): _check_option(kind, k, v, "[base]", path)
            for k, v in data.get("base", {}).items()}
    grid: dict[str, list[Any]] = {}
    for key, values in data.get("grid", {}).items():
        if not isinstance(values, list):
            raise UsageError(f"{path}: [grid].{key} must be a list of values, got {values!r}; "
                             f"write {key} = [{values!r}] (or move it to [base]).")
        if not values:
            raise UsageError(f"{path}: [grid].{key} is an empty list, so the grid has no runs; "
                             "give it at least one value.")
        grid[key.replace("-", "_")] = [_check_option(kind, key, v, "[grid]", path)
                                       for v in values]
    cases = [{k.replace("-", "_"): _check_option(kind, k, v, f"[[cases]] #{i + 1}", path)
              for k, v in case.items()} for i, case in enumerate(data.get("cases", []))]
    extra = []
    for i, run in enumerate(data.get("runs", [])):
        extra.append({k.replace("-", "_"): _check_option(kind, k, v, f"[[runs]] #{i + 1}", path)
                      for k, v in run.items()})
    product = [dict(zip(grid, values, strict=True))
               for values in itertools.product(*grid.values())] if grid else [{}]
    combos = [{**combo, **case} for case in (cases or [{}]) for combo in product]
    if not grid and not cases and extra:
        combos = []  # only the explicit runs
    case_keys = [k for case in cases for k in case]
    varying = list(dict.fromkeys([*case_keys, *grid,
                                  *sorted({k for run in extra for k in run})]))
    runs: list[Run] = []
    seen: set[str] = set()
    for combo in [*combos, *extra]:
        options = _normalize(kind, {**base, **combo})
        name = run_name(options, varying)
        if name not in seen:
            seen.add(name)
            runs.append(Run(len(runs), name, options))
    slurm = {}
    for key, value in data.get("slurm", {}).items():
        if key not in SLURM_KEYS:
            raise _closest(key, sorted(SLURM_KEYS), "[slurm]", path)
        if not isinstance(value, SLURM_KEYS[key]) or isinstance(value, bool):
            raise UsageError(f"{path}: [slurm].{key} must be a "
                             f"{'whole number' if SLURM_KEYS[key] is int else 'string'}, got "
                             f"{value!r}.")
        slurm[key] = value
    sweep = Sweep(path, kind, str(data.get("name", path.stem)), runs, slurm)
    _check_runs(sweep)
    return sweep


def _check_runs(sweep: Sweep) -> None:
    """Checks that need no run: data folders exist, topology sizes fit the tasks."""
    from choco.run.plan import resolve_topology

    ntasks = int(sweep.slurm.get("ntasks", 1))
    for run in sweep.runs:
        data_dir = run.options.get("data_dir")
        if data_dir and not Path(data_dir).expanduser().is_dir():
            raise UsageError(f"{sweep.path}: run {run.name} reads data from {data_dir!r}, which "
                             "is not a folder; fix data_dir (an absolute path is safest).")
        if ntasks > 1:
            topo = resolve_topology(str(run.options.get("topology", "ring:8")),
                                    str(run.options.get("mixing", "metropolis")), ntasks,
                                    mpi=True)
            if topo.n != ntasks:  # pragma: no cover - resolve_topology raises first
                raise UsageError(f"{run.name}: topology n {topo.n} != ntasks {ntasks}")


def command(sweep: Sweep, run: Run, out: Path, mpi: bool = False) -> list[str]:
    """The exact command that executes ``run`` into ``out/run.name``."""
    folder = out / run.name
    argv: list[str] = []
    for key, value in run.options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        argv += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    if sweep.kind == "consensus":
        return [sys.executable, "-m", "choco.consensus", *argv, "--out",
                str(folder / "consensus.npz"), "--overwrite", "--json", "--quiet"]
    state = run_state(folder)
    if "checkpoint_every" not in run.options:  # an interrupted run resumes from its epoch
        argv += ["--checkpoint-every", "1"]
    argv += ["--out", str(folder), "--json", "--quiet",
             "--backend", "mpi" if mpi else "local"]
    if state == "interrupted":
        argv.append("--resume")
    elif state == "started":
        argv.append("--overwrite")
    return [sys.executable, "-m", "choco.train", *argv]


def run_state(folder: Path) -> str:
    """``finished`` (result.json), ``interrupted`` (a checkpoint), ``started``, ``new``."""
    if (folder / "result.json").is_file():
        return "finished"
    checkpoint = folder / "checkpoint"
    if checkpoint.is_dir() and any((p / "manifest.json").is_file() for p in checkpoint.iterdir()):
        return "interrupted"
    return "started" if folder.exists() else "new"


def execute(sweep: Sweep, run: Run, out: Path, mpi_prefix: list[str] | None = None) -> dict:
    """Run ``run`` (unless finished), log to ``NAME/log.txt``, write ``NAME/result.json``."""
    folder = out / run.name
    if run_state(folder) == "finished":
        return json.loads((folder / "result.json").read_text())
    cmd = command(sweep, run, out, mpi=mpi_prefix is not None)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(folder / "log.txt", "a") as log:
        log.write("$ " + shlex.join([*(mpi_prefix or []), *cmd]) + "\n")
        log.flush()
        proc = subprocess.run([*(mpi_prefix or []), *cmd], stdout=subprocess.PIPE,
                              stderr=log, text=True, cwd=ROOT, check=False)
        log.write(proc.stdout)
    summary = {}
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            summary = json.loads(lines[-1])
        except ValueError:
            summary = {}
    status = {0: "finished", DIVERGED_EXIT: "diverged"}.get(proc.returncode, "failed")
    result = {"name": run.name, "index": run.index, "kind": sweep.kind, "status": status,
              "exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 2),
              "options": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in run.options.items()}, "summary": summary}
    if status != "failed":
        (folder / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def describe(result: dict) -> str:
    s = result.get("summary", {})
    if result["status"] == "diverged":
        return f"diverged (epoch {s.get('epoch')})"
    if result["status"] == "failed":
        return f"FAILED (exit {result['exit']}; see its log.txt)"
    if "test_accuracy" in s:
        return f"acc {100 * s['test_accuracy']:.2f}%"
    if "test_perplexity" in s:
        return f"ppl {s['test_perplexity']:.2f}"
    if "reduction" in s:
        return f"error x{s['reduction']:.3g} lower"
    return "done"


def write_manifest(sweep: Sweep, out: Path) -> None:
    """``out/sweep.json``: the expanded runs (written atomically: array tasks race here)."""
    from choco.run.files import atomic_write_text

    text = json.dumps({
        "sweep": str(sweep.path), "kind": sweep.kind, "name": sweep.name,
        "runs": [{"index": r.index, "name": r.name, "options": r.options} for r in sweep.runs],
    }, indent=1, default=list) + "\n"
    path = out / "sweep.json"
    if path.is_file() and path.read_text() == text:
        return  # the same manifest already: leave the file (and its time) alone
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def launch_local(sweep: Sweep, out: Path, jobs: int) -> int:
    pending = [r for r in sweep.runs if run_state(out / r.name) != "finished"]
    skipped = len(sweep.runs) - len(pending)
    print(f"{sweep.name}: {len(sweep.runs)} runs, {skipped} finished already, running "
          f"{len(pending)} ({jobs} at a time) into {out}", flush=True)
    failed = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(execute, sweep, r, out): r for r in pending}
        for k, future in enumerate(as_completed(futures), 1):
            result = future.result()
            failed += result["status"] == "failed"
            print(f"[{k}/{len(pending)}] {result['name']}: {describe(result)} "
                  f"({result['seconds']:.1f} s)", flush=True)
    print(f"done: {len(sweep.runs) - failed} of {len(sweep.runs)} runs have results in {out}; "
          f"report with: python -m experiments.report {out}", flush=True)
    return 1 if failed else 0


def launch_slurm(sweep: Sweep, out: Path, dry_run: bool) -> int:
    pending = [r.index for r in sweep.runs if run_state(out / r.name) != "finished"]
    if not pending:
        print(f"{sweep.name}: all {len(sweep.runs)} runs are finished in {out}")
        return 0
    slurm = sweep.slurm
    cmd = ["sbatch", "--parsable", f"--array={','.join(map(str, pending))}",
           f"--job-name=sweep-{sweep.name}", f"--ntasks={slurm.get('ntasks', 1)}"]
    if "cpus_per_task" not in slurm and int(slurm.get("ntasks", 1)) > 1:
        cmd.append("--cpus-per-task=1")  # one CPU per MPI rank unless the sweep says more
    for key in ("cpus_per_task", "time", "partition", "mem"):
        if key in slurm:
            cmd.append(f"--{key.replace('_', '-')}={slurm[key]}")
    cmd += [str(ROOT / "slurm" / "sweep.sbatch"), str(sweep.path.resolve()), str(out.resolve())]
    if dry_run:
        print(shlex.join(cmd))
        return 0
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise UsageError(f"sbatch refused the job array ({proc.stderr.strip()}); check that "
                         "SLURM is reachable (sinfo) and the [slurm] settings.")
    print(f"submitted job array {proc.stdout.strip().split(';')[0]} with {len(pending)} runs "
          f"into {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog=prog_name("choco-sweep", "experiments.sweep"), description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="the sweep file (TOML), e.g. "
                   "experiments/configs/small_ring8.toml")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run here, in-process backend; slurm: submit a job array")
    p.add_argument("--out", default=None, help="output folder (default: runs/<sweep name>)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="runs at a time with --launcher local (default: the number of CPUs)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every run and the exact command, run nothing")
    p.add_argument("--index", type=int, default=None,
                   help="run only run number INDEX (what each SLURM array task does)")
    args = p.parse_args(argv)

    def go() -> int:
        sweep = load_sweep(Path(args.sweep))
        out = Path(args.out or f"runs/{sweep.name}")
        if args.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {args.jobs}.")
        mpi = int(sweep.slurm.get("ntasks", 1)) > 1
        if args.index is not None:
            if not 0 <= args.index < len(sweep.runs):
                raise UsageError(f"--index must be in [0, {len(sweep.runs)}) for {sweep.path}, "
                                 f"got {args.index}.")
            run = sweep.runs[args.index]
            if run_state(out / run.name) == "finished":  # at once, touching nothing
                result = json.loads((out / run.name / "result.json").read_text())
                print(f"{result['name']}: {describe(result)}", flush=True)
                return 0
            write_manifest(sweep, out)
            prefix = shlex.split(os.environ.get("CHOCO_MPI_LAUNCH", "srun --mpi=pmi2")) \
                if mpi else None
            result = execute(sweep, run, out, prefix)
            print(f"{result['name']}: {describe(result)}", flush=True)
            return 1 if result["status"] == "failed" else 0
        if args.dry_run and args.launcher == "local":
            for run in sweep.runs:
                state = run_state(out / run.name)
                print(f"[{run.index}] {run.name} ({state}): "
                      f"{shlex.join(command(sweep, run, out))}")
            return 0
        write_manifest(sweep, out) if not args.dry_run else None
        if args.launcher == "slurm":
            return launch_slurm(sweep, out, args.dry_run)
        return launch_local(sweep, out, args.jobs)

    return run_local(go)


if __name__ == "__main__":
    sys.exit(main())

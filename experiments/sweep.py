"""Sweeps: a base configuration × a grid of options, run locally or as a SLURM job array.

    choco-sweep SWEEP.toml [--launcher local|slurm] [--out DIR] [--jobs J] [--dry-run]
                           [--set KEY=VALUE ...] [--index I]

(``python -m experiments.sweep`` is the same program.) ``SWEEP.toml`` is a path, or the name
of a shipped sweep file in ``experiments/configs/`` (``small_ring8``). A sweep file (TOML)::

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
    time = "01:00:00"              # also cpus_per_task, partition, mem, account, qos, gres,
                                   # gpus_per_task, sbatch = [extra options] (experiments/sbatch.py)

Options that an algorithm does not use (``compressor`` for exact, allreduce and local, γ for
all but choco) are dropped, so a grid never runs the same run twice. Each run is named from
the options that vary (``algorithm=choco,compressor=topk:0.01`` → ``choco_topk0.01``) plus an
8-character hash of all its options: stable, so re-running a sweep finds its finished runs
(``DIR/NAME/result.json``) and skips them, and resumes interrupted ones from their checkpoint.
``--set KEY=VALUE`` (repeatable) replaces a ``[base]`` option without editing the file (e.g.
``--set data_dir=/scratch/cifar``); the value is read as a TOML value when it is one (``5``,
``0.1``, ``true``, ``[150, 225]``), else as a string, and checked like the file's. It changes
the runs' options and so their hashes and names. A diverged run (choco-train exit 3) is a
result, not a failure. ``--dry-run`` prints every run and its exact command and runs nothing
(a missing data folder is then a warning; a real run refuses it). ``--index I`` runs only
run I: what each task of the SLURM array (slurm/sweep.sbatch) does.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from choco.errors import UsageError
from choco.run.cli import DIVERGED_EXIT, ArgumentParser, prog_name, run_local

from .sbatch import sbatch_command, submit, sweep_script
from .sweepfile import (
    CONFIGS,
    CONSENSUS_OPTIONS,
    KINDS,
    RESERVED,
    Run,
    Sweep,
    find_sweep_file,
    load_sweep,
    missing_data,
    parse_overrides,
    run_name,
)

__all__ = ["CONFIGS", "CONSENSUS_OPTIONS", "KINDS", "RESERVED", "Run", "Sweep", "command",
           "execute", "find_sweep_file", "load_sweep", "main", "missing_data",
           "parse_overrides", "run_name", "run_state"]

#: the checkout (or site-packages) folder holding experiments/
ROOT = Path(__file__).resolve().parent.parent


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


def child_env() -> dict[str, str]:
    """This environment, with the folder holding the imported ``choco`` first on PYTHONPATH:
    every run uses the same choco as the sweep, from any working folder."""
    import choco

    here = str(Path(choco.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + path if path else "")}


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
                              stderr=log, text=True, env=child_env(), check=False)
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
        "set": sweep.overrides,
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
          f"report with: choco-report {out}", flush=True)
    return 1 if failed else 0


def launch_slurm(sweep: Sweep, out: Path, dry_run: bool) -> int:
    """Submit the unfinished runs as one job array of slurm/sweep.sbatch (or print it)."""
    pending = [r.index for r in sweep.runs if run_state(out / r.name) != "finished"]
    if not pending:
        print(f"{sweep.name}: all {len(sweep.runs)} runs are finished in {out}")
        return 0
    sweep_args = [arg for item in sweep.overrides for arg in ("--set", item)]
    cmd = sbatch_command(sweep.slurm, sweep.name, pending, sweep_script(ROOT), sweep.path,
                         out, sweep_args)
    job = submit(cmd, dry_run)
    if job is not None:
        print(f"submitted job array {job} with {len(pending)} runs into {out}", flush=True)
    return 0


def print_plan(sweep: Sweep, out: Path, mpi: bool) -> None:
    """``--dry-run``: one line per run, ``[I] NAME (state): exact command``."""
    print(f"{sweep.name}: {len(sweep.runs)} {sweep.kind} runs from {sweep.path} into {out}"
          + (f" (--set {' '.join(sweep.overrides)})" if sweep.overrides else ""), flush=True)
    for run in sweep.runs:
        state = run_state(out / run.name)
        print(f"[{run.index}] {run.name} ({state}): "
              f"{shlex.join(command(sweep, run, out, mpi=mpi))}")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog=prog_name("choco-sweep", "experiments.sweep"), description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="the sweep file (TOML), e.g. "
                   "experiments/configs/small_ring8.toml, or the name of a shipped one "
                   "(small_ring8)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run here, in-process backend; slurm: submit a job array")
    p.add_argument("--out", default=None, help="output folder (default: runs/<sweep name>)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="runs at a time with --launcher local (default: the number of CPUs)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every run and the exact command, run nothing")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="replace a [base] option of the sweep file (repeatable), e.g. "
                   "--set data_dir=/scratch/data --set epochs=5")
    p.add_argument("--index", type=int, default=None,
                   help="run only run number INDEX (what each SLURM array task does)")
    args = p.parse_args(argv)

    def go() -> int:
        sweep = load_sweep(args.sweep, args.overrides)
        out = Path(args.out or f"runs/{sweep.name}")
        if args.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {args.jobs}.")
        mpi = int(sweep.slurm.get("ntasks", 1)) > 1
        for problem in missing_data(sweep):
            if not args.dry_run:
                raise UsageError(problem)
            print(f"warning: {problem}", file=sys.stderr, flush=True)
        if args.index is not None and not args.dry_run:
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
        if args.dry_run:
            print_plan(sweep, out, mpi and args.launcher == "slurm")
            if args.launcher == "local":
                return 0
        else:
            write_manifest(sweep, out)
        if args.launcher == "slurm":
            return launch_slurm(sweep, out, args.dry_run)
        return launch_local(sweep, out, args.jobs)

    return run_local(go)


if __name__ == "__main__":
    sys.exit(main())

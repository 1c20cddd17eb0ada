"""The ``[slurm]`` table of a sweep file and the ``sbatch`` command of its job array.

A sweep submitted with ``--launcher slurm`` becomes one job array of ``slurm/sweep.sbatch``,
one array task per run that has no result yet. The ``[slurm]`` table sets the array's
allocation; every key maps to one ``sbatch`` option::

    [slurm]
    ntasks = 1                 # --ntasks: tasks per array task (> 1: each run under srun, MPI)
    cpus_per_task = 8          # --cpus-per-task (default 1 when ntasks > 1)
    time = "48:00:00"          # --time
    partition = "gpu"          # --partition
    mem = "32G"                # --mem
    account = "proj123"        # --account
    qos = "normal"             # --qos
    gres = "gpu:1"             # --gres (generic resources, e.g. GPUs per node)
    gpus_per_task = 1          # --gpus-per-task (a count, or "TYPE:COUNT")
    sbatch = ["--constraint=a100", "--exclusive"]   # passed to sbatch as written, last

The ``sbatch`` list comes after the options above, so it can also override them (sbatch
takes the last value of an option given twice); ``--array`` and ``--parsable`` are the
sweep's own and are refused there.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from choco.errors import UsageError

#: key → (type(s) it accepts, the sbatch option it becomes)
SLURM_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "ntasks": ((int,), "--ntasks"),
    "cpus_per_task": ((int,), "--cpus-per-task"),
    "time": ((str,), "--time"),
    "partition": ((str,), "--partition"),
    "mem": ((str,), "--mem"),
    "account": ((str,), "--account"),
    "qos": ((str,), "--qos"),
    "gres": ((str,), "--gres"),
    "gpus_per_task": ((int, str), "--gpus-per-task"),
    "sbatch": ((list,), ""),
}
#: sbatch options the sweep sets itself (refused in the ``sbatch`` list)
OWN_OPTIONS = ("--array", "-a", "--parsable")
_WORDS = {int: "a whole number", str: "a string", list: "a list of strings"}


def parse_slurm_table(table: dict[str, Any], path: Path,
                      closest: Callable[[str, list[str], str, Path], Exception]
                      ) -> dict[str, Any]:
    """Check a sweep file's ``[slurm]`` table; ``closest(key, valid, where, path)`` makes the
    "unknown key (did you mean ...)" error."""
    slurm: dict[str, Any] = {}
    for key, value in table.items():
        if key not in SLURM_KEYS:
            raise closest(key, sorted(SLURM_KEYS), "[slurm]", path)
        kinds, _ = SLURM_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            words = " or ".join(_WORDS[k] for k in kinds)
            raise UsageError(f"{path}: [slurm].{key} must be {words}, got {value!r}.")
        if isinstance(value, list):  # the sbatch pass-through list
            for item in value:
                if not isinstance(item, str) or not item.startswith("-"):
                    raise UsageError(
                        f"{path}: [slurm].sbatch must list sbatch options as strings that "
                        f"start with '-' (e.g. [\"--constraint=a100\"]), got {item!r}.")
                if item.split("=")[0] in OWN_OPTIONS:
                    raise UsageError(
                        f"{path}: [slurm].sbatch sets {item!r}, which the sweep sets itself "
                        "(one array task per unfinished run); remove it.")
            value = list(value)
        slurm[key] = value
    return slurm


def ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"`` (sbatch's ``--array`` syntax)."""
    parts: list[str] = []
    for _, group in itertools.groupby(enumerate(indices), lambda p: p[1] - p[0]):
        block = [i for _, i in group]
        parts.append(str(block[0]) if len(block) == 1 else f"{block[0]}-{block[-1]}")
    return ",".join(parts)


def sweep_script(root: Path) -> Path:
    """``slurm/sweep.sbatch`` of the choco checkout (``CHOCO_REPO`` or this file's)."""
    for base in (os.environ.get("CHOCO_REPO"), root):
        if base and (Path(base) / "slurm" / "sweep.sbatch").is_file():
            return Path(base) / "slurm" / "sweep.sbatch"
    raise UsageError(
        f"--launcher slurm submits slurm/sweep.sbatch of a choco checkout, but {root} has none "
        "(choco was installed without its checkout); clone the repository and set "
        "CHOCO_REPO=/path/to/choco.")


def sbatch_command(slurm: dict[str, Any], name: str, pending: list[int], script: Path,
                   sweep_path: Path, out: Path, sweep_args: list[str]) -> list[str]:
    """The ``sbatch`` command that submits ``pending`` runs as one job array.

    ``sweep_args`` are passed on to every array task's ``experiments.sweep`` (``--set``).
    """
    cmd = ["sbatch", "--parsable", f"--array={ranges(pending)}",
           f"--job-name=sweep-{name}", f"--ntasks={slurm.get('ntasks', 1)}"]
    if "cpus_per_task" not in slurm and int(slurm.get("ntasks", 1)) > 1:
        cmd.append("--cpus-per-task=1")  # one CPU per MPI rank unless the sweep says more
    for key, (_, option) in SLURM_KEYS.items():
        if key not in ("ntasks", "sbatch") and key in slurm:
            cmd.append(f"{option}={slurm[key]}")
    cmd += slurm.get("sbatch", [])
    return [*cmd, str(script), str(sweep_path.resolve()), str(out.resolve()), *sweep_args]


def submit(cmd: list[str], dry_run: bool) -> str | None:
    """Print ``cmd`` (``dry_run``) or run it; the job id, or None for a dry run."""
    if dry_run:
        print(shlex.join(cmd), flush=True)
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise UsageError("--launcher slurm needs sbatch on PATH, but it was not found; run "
                         "on a SLURM login node (or use --launcher local).") from None
    if proc.returncode != 0:
        raise UsageError(f"sbatch refused the job array ({proc.stderr.strip()}); check that "
                         "SLURM is reachable (sinfo) and the [slurm] settings.")
    return proc.stdout.strip().split(";")[0]

"""Sweep files: parse, check and expand a sweep file (TOML) into named runs.

The format is described in :mod:`experiments.sweep`. :func:`load_sweep` checks every key and
value (unknown keys get the closest valid names), applies ``--set KEY=VALUE`` overrides to
``[base]``, expands base × grid × cases plus the explicit runs, drops the options an algorithm
does not use and names every run from its varying options plus a hash of all its options.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from choco.errors import UsageError
from choco.run.algorithms import ALGORITHMS
from choco.run.config import FIELDS, _convert

from .sbatch import parse_slurm_table, ranges

#: the shipped sweep files (installed with the package)
CONFIGS = Path(__file__).resolve().parent / "configs"
KINDS = ("train", "consensus")
#: consensus options a sweep may set, with their types
CONSENSUS_OPTIONS: dict[str, type] = {
    "topology": str, "mixing": str, "compressor": str, "gamma": str, "steps": int,
    "dim": int, "seed": int, "init": str, "network": str,
}
#: choco-train options the sweep itself sets for every run
RESERVED = {"out", "resume", "overwrite", "backend", "json", "quiet"}
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
    #: the ``--set KEY=VALUE`` arguments applied to ``[base]``, as given
    overrides: list[str] = field(default_factory=list)


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


def _toml() -> Any:
    """``tomllib`` (Python >= 3.11) or its backport ``tomli``."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.10
        import tomli
    except ImportError:  # pragma: no cover
        raise UsageError("sweep files need Python >= 3.11 or `pip install tomli`") from None
    return tomli


def find_sweep_file(name: str | Path) -> Path:
    """``name`` if it is a file, else the shipped ``experiments/configs/NAME[.toml]``."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIGS / path.name, CONFIGS / f"{path.name}.toml"):
        if path.parent == Path(".") and candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.toml")))
    close = difflib.get_close_matches(path.stem, shipped.split(", "), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"the sweep file must exist, got {name} (not found){hint}; give a path "
                     f"or the name of a shipped sweep file: {shipped}.")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["epochs=5", "topology=ring:4"]`` → ``{"epochs": 5, "topology": "ring:4"}``.

    A value that is a TOML value (``5``, ``0.1``, ``true``, ``[150, 225]``, ``"a b"``) is
    read as one, anything else is a string; the types are checked later, like the file's.
    """
    tomllib = _toml()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE (e.g. --set epochs=5), got {item!r}.")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key.strip()] = value
    return out


def load_sweep(path: Path | str, overrides: list[str] | None = None) -> Sweep:
    """Parse and validate a sweep file; every error names the file, the key and the fix.

    ``overrides`` are ``KEY=VALUE`` strings that replace (or add) ``[base]`` options.
    """
    tomllib = _toml()
    path = find_sweep_file(path)
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
    given = parse_overrides(list(overrides or []))
    varied: dict[str, list[str]] = {}
    for where, tables in (("[grid]", [data.get("grid", {})]), ("[[cases]]", data.get("cases", [])),
                          ("[[runs]]", data.get("runs", []))):
        for key in {k.replace("-", "_") for table in tables for k in table}:
            varied.setdefault(key, []).append(where)
    for key, value in given.items():
        name = key.replace("-", "_")
        if name in varied:
            raise UsageError(f"--set {key}=...: {path} sets {name} in "
                             f"{' and '.join(varied[name])}, which wins over [base], so --set "
                             "would not change those runs; edit the sweep file (a copy of it) "
                             "instead.")
        base[name] = _check_option(kind, key, value, "--set", path)
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
    slurm = parse_slurm_table(data.get("slurm", {}), path, _closest)
    sweep = Sweep(path, kind, str(data.get("name", path.stem)), runs, slurm,
                  [f"{k}={v}" for k, v in (item.split("=", 1) for item in overrides or [])])
    _check_runs(sweep)
    return sweep


def missing_data(sweep: Sweep) -> list[str]:
    """One sentence per ``data_dir`` that is not a folder, naming the runs that read it."""
    by_dir: dict[str, list[Run]] = {}
    for run in sweep.runs:
        data_dir = run.options.get("data_dir")
        if data_dir and not Path(data_dir).expanduser().is_dir():
            by_dir.setdefault(str(data_dir), []).append(run)
    out = []
    for data_dir, runs in by_dir.items():
        names = ", ".join(r.name for r in runs[:3]) + (f" and {len(runs) - 3} more"
                                                         if len(runs) > 3 else "")
        out.append(f"{sweep.path}: {len(runs)} of {len(sweep.runs)} runs (runs "
                   f"{ranges([r.index for r in runs])}: {names}) read data from "
                   f"{data_dir!r}, which is not a folder; give the data folder with --set "
                   "data_dir=/path/to/data (an absolute path is safest) or fix data_dir in "
                   "the file.")
    return out


def _check_runs(sweep: Sweep) -> None:
    """Checks that need no run: topology sizes fit the tasks (data: :func:`missing_data`)."""
    from choco.run.plan import resolve_topology

    ntasks = int(sweep.slurm.get("ntasks", 1))
    for run in sweep.runs:
        if ntasks > 1:
            topo = resolve_topology(str(run.options.get("topology", "ring:8")),
                                    str(run.options.get("mixing", "metropolis")), ntasks,
                                    mpi=True)
            if topo.n != ntasks:  # pragma: no cover - resolve_topology raises first
                raise UsageError(f"{run.name}: topology n {topo.n} != ntasks {ntasks}")

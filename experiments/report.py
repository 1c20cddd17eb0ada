"""Aggregate a sweep's runs into ``runs.csv``, a Markdown table and PNG plots.

    choco-report DIR [--target-accuracy 0.9] [--target-reduction 1e6] [--baseline K=V]
                     [--no-plots] [--copy-plots DIR2] [--quiet]

(``python -m experiments.report`` is the same program.) ``DIR`` is a sweep's output folder
(``choco-sweep``). Writes, in ``DIR``, and names every file it wrote (``wrote PATH``, on
stderr, so that stdout is the table alone):

* ``runs.csv``: one row per run with its varying options and results;
* ``report.md``: the Markdown table (also printed), with notes under it: training runs give
  the final and best test accuracy of the network average x̄ (%), the mean accuracy of the
  nodes' own models (%), the consensus distance, MiB sent per node, MiB per node to reach
  ``--target-accuracy`` (x̄) and two times: ``train loop s``, the epochs alone
  (``wall_time_s`` of metrics.jsonl), and ``run s``, the whole process as the sweep timed it
  (start-up, γ tuner, data loading, and the CPU shared with the sweep's other runs: the time
  on the sweep's progress line); consensus runs give the error reduction after T steps and
  the bytes per node to reduce the error ``--target-reduction`` times;
* plots (matplotlib, ``pip install -e '.[plots]'``): ``accuracy_vs_epoch.png`` and
  ``accuracy_vs_bytes.png`` for training (accuracy in %), ``error_vs_steps.png`` and
  ``error_vs_bytes.png`` for consensus (log scales), titled with the sweep's name (and its
  data partition), one panel per topology, one line per run; a run that sends nothing is a
  dashed line at its final value on the bytes plots, a diverged run ends with an ×
  (:mod:`experiments.plots`); ``plots.json`` lists every figure's panels and legend entries.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from choco.errors import UsageError
from choco.run.cli import ArgumentParser, prog_name, run_local

from .plots import MIB, consensus_series, draw, figure_specs, label, panel, train_series

__all__ = ["add_factor", "consensus_series", "label", "load_runs", "main", "markdown", "notes",
           "panel", "plot", "summarize", "train_series"]

#: the time columns of training runs (see :func:`notes`)
TRAIN_TIME = "train loop s"
RUN_TIME = "run s"


def load_runs(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every run with a result in ``folder``, and the option names that vary between them."""
    manifest = folder / "sweep.json"
    if not manifest.is_file():
        raise UsageError(f"{folder} must be a sweep's output folder (with sweep.json), but it "
                         "has none; run python -m experiments.sweep SWEEP.toml --out "
                         f"{folder} first.")
    sweep = json.loads(manifest.read_text())
    runs = []
    for entry in sweep["runs"]:
        result_path = folder / entry["name"] / "result.json"
        if result_path.is_file():
            run = json.loads(result_path.read_text())
            run["folder"] = folder / entry["name"]
            runs.append(run)
    if not runs:
        raise UsageError(f"no run in {folder} has finished yet (no */result.json); run the "
                         "sweep first.")
    keys = sorted({k for r in runs for k in r["options"]})
    varying = [k for k in keys if len({json.dumps(r["options"].get(k)) for r in runs}) > 1]
    return runs, varying


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, spec)


def summarize(runs: list[dict[str, Any]], varying: list[str], target_accuracy: float,
              target_reduction: float) -> list[dict[str, Any]]:
    """One flat record per run (the rows of runs.csv and of the Markdown table)."""
    records = []
    for run in runs:
        rec: dict[str, Any] = {"run": run["name"], "status": run["status"],
                               **{k: run["options"].get(k) for k in varying}}
        if run["kind"] == "train":
            s = train_series(run)
            acc = [a for a in s["accuracy"] if a is not None]
            reach = next((b for a, b in zip(s["accuracy"], s["bytes"], strict=True)
                          if a is not None and a >= target_accuracy), None)
            rec.update({
                "epochs": s["epoch"][-1], "final_accuracy": acc[-1] if acc else None,
                "best_accuracy": max(acc) if acc else None,
                "local_accuracy": s["local"][-1], "final_perplexity": s["perplexity"][-1],
                "consensus_distance": s["consensus"][-1],
                "mib_per_node": s["bytes"][-1] / MIB,
                "mib_to_target": None if reach is None else reach / MIB,
                "wall_time_s": s["time"][-1], "run_seconds": run.get("seconds")})
        else:
            s = consensus_series(run)
            error = s["error"]
            hit = np.flatnonzero(error <= error[0] / target_reduction)
            rec.update({
                "steps": len(error) - 1, "gamma_used": run["summary"].get("gamma"),
                "error_initial": float(error[0]), "error_final": float(error[-1]),
                "reduction": float(error[0] / error[-1]) if error[-1] > 0 else math.inf,
                "bytes_per_node": float(s["bytes"][-1]),
                "bytes_to_target": float(s["bytes"][hit[0]]) if hit.size else None,
                "steps_to_target": int(hit[0]) if hit.size else None})
        rec.update(simulated_record(run, s, target_accuracy, target_reduction))
        records.append(rec)
    return records


# ---------------------------------------------------------------------------- simulated time
def simulated_record(run: dict[str, Any], s: dict[str, Any], target_accuracy: float,
                     target_reduction: float) -> dict[str, Any]:
    """``sim_time_s`` (simulated seconds of the whole run) and ``sim_s_to_target`` (when x̄
    first reached the target accuracy, or the error its target reduction) of a run made with
    ``--network`` (docs/simulation.md); nothing for other runs."""
    sim = s.get("sim")
    if sim is None or (run["kind"] == "train" and any(t is None for t in sim)):
        return {}
    if run["kind"] == "train":
        reach = next((t for a, t in zip(s["accuracy"], sim, strict=True)
                      if a is not None and a >= target_accuracy), None)
    else:
        error = s["error"]
        hit = np.flatnonzero(error <= error[0] / target_reduction)
        reach = float(sim[hit[0]]) if hit.size else None
    return {"sim_time_s": float(sim[-1]), "sim_s_to_target": reach}


def simulated_columns(records: list[dict[str, Any]], target: str) -> list[tuple]:
    """The report's simulated-time columns, when any run has a simulated time."""
    if not any("sim_time_s" in rec for rec in records):
        return []
    return [("sim. s", "sim_time_s", lambda v: _fmt(v, ".4g")),
            (f"sim. s to {target}", "sim_s_to_target",
             lambda v: _fmt(v, ".4g") if v is not None else "not reached")]


def plot_simulated(runs: list[dict[str, Any]], varying: list[str], folder: Path) -> list[str]:
    """``accuracy_vs_sim_time.png`` / ``error_vs_sim_time.png`` for runs with a simulated
    time; the names of the figures written."""
    timed = [r for r in runs if simulated_record(r, train_series(r) if r["kind"] == "train"
                                                 else consensus_series(r), 0.0, 1.0)]
    if not timed:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = timed[0]["kind"] == "train"
    name = "accuracy_vs_sim_time.png" if train else "error_vs_sim_time.png"
    panels = sorted({panel(r) for r in timed})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, title in zip(axes[0], panels, strict=True):
        for run in (r for r in timed if panel(r) == title):
            s = train_series(run) if train else consensus_series(run)
            ys = ([np.nan if a is None else a for a in s["accuracy"]] if train
                  else s["error"])
            ax.plot(s["sim"], ys, label=label(run, varying), marker="." if train else None)
        ax.set_title(title)
        ax.set_xlabel("simulated seconds (last node)")
        ax.set_ylabel("test accuracy of x̄" if train else "(1/n) Σ‖x_i − x̄⁰‖²")
        if not train:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return [name]


def add_factor(records: list[dict[str, Any]], baseline: str) -> None:
    """``factor``: the baseline run's MiB to the target divided by each run's."""
    key, sep, value = baseline.partition("=")
    base = [r for r in records if sep and str(r.get(key)) == value]
    if len(base) != 1 or base[0].get("mib_to_target") is None:
        raise UsageError(f"--baseline must name exactly one run that reached the target, as "
                         f"KEY=VALUE of a varying option, got {baseline!r} ({len(base)} runs "
                         "match); e.g. --baseline algorithm=exact.")
    ref = base[0]["mib_to_target"]
    for rec in records:
        mib = rec.get("mib_to_target")
        rec["factor"] = ref / mib if mib else None


def markdown(records: list[dict[str, Any]], varying: list[str], kind: str,
             target_accuracy: float, target_reduction: float) -> str:
    head = list(varying)
    if kind == "train":
        cols = [("final acc x̄ %", "final_accuracy", lambda v: _fmt(100 * v, ".2f")
                 if v is not None else ""),
                ("best acc x̄ %", "best_accuracy", lambda v: _fmt(100 * v, ".2f")
                 if v is not None else ""),
                ("acc local %", "local_accuracy", lambda v: _fmt(100 * v, ".2f")
                 if v is not None else ""),
                ("consensus dist.", "consensus_distance", lambda v: _fmt(v, ".3g")),
                ("MiB/node", "mib_per_node", lambda v: _fmt(v, ".3f")),
                (f"MiB/node to {100 * target_accuracy:g} %", "mib_to_target",
                 lambda v: _fmt(v, ".3f") if v is not None else "not reached"),
                (TRAIN_TIME, "wall_time_s", lambda v: _fmt(v, ".1f")),
                (RUN_TIME, "run_seconds", lambda v: _fmt(v, ".1f"))]
        if any("factor" in rec for rec in records):
            cols.insert(-2, ("× fewer bytes to target", "factor",
                             lambda v: _fmt(v, ".1f") if v is not None else ""))
        cols += simulated_columns(records, f"{100 * target_accuracy:g} %")
    else:
        cols = [("γ", "gamma_used", lambda v: _fmt(v, ".3g")),
                ("error₀", "error_initial", lambda v: _fmt(v, ".3g")),
                ("error_T", "error_final", lambda v: _fmt(v, ".3g")),
                ("reduction", "reduction", lambda v: _fmt(v, ".3g")),
                ("bytes/node", "bytes_per_node", lambda v: _fmt(v, ".0f")),
                (f"bytes/node to ×{target_reduction:g}", "bytes_to_target",
                 lambda v: _fmt(v, ".0f") if v is not None else "not reached"),
                *simulated_columns(records, f"×{target_reduction:g}")]
    lines = ["| " + " | ".join([*head, *(c[0] for c in cols)]) + " |",
             "|" + "---|" * (len(head) + len(cols))]
    for rec in records:
        cells = ["-" if rec.get(k) is None else str(rec.get(k)) for k in head]
        if rec["status"] == "diverged":
            cells += [f"diverged (epoch {rec.get('epochs')})"] + [""] * (len(cols) - 1)
            for i, (_, key, fn) in enumerate(cols):
                if key in ("mib_per_node", "wall_time_s", "run_seconds"):
                    cells[len(head) + i] = fn(rec.get(key))
        else:
            cells += [fn(rec.get(key)) for _, key, fn in cols]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    explained = notes(records, kind)
    return text + ("\n" + "\n".join(f"- {n}" for n in explained) + "\n" if explained else "")


def notes(records: list[dict[str, Any]], kind: str) -> list[str]:
    """What the table's columns and special rows mean (printed under the table)."""
    if kind != "train":
        return []
    out = [f"{TRAIN_TIME}: the epochs of the run (training, evaluation, checkpoints: "
           "metrics.jsonl's wall_time_s); "
           f"{RUN_TIME}: the whole choco-train process as the sweep timed it, also start-up, "
           "the γ tuner and data loading, with the sweep's other runs (--jobs) sharing the CPU "
           "(the time on the sweep's progress line)."]
    diverged = [r for r in records if r["status"] == "diverged"]
    if diverged:
        out.append("diverged (epoch N): the loss stopped being finite in epoch N, on every "
                   "node; the plots end the run's line with × at its last finite point.")
    if any(r.get("mib_per_node") == 0 for r in records):
        out.append("MiB/node 0: the run sends nothing (no communication); the "
                   "accuracy-vs-bytes plot shows its final accuracy as a dashed line.")
    return out


def plot(runs: list[dict[str, Any]], varying: list[str], folder: Path,
         sweep_name: str) -> tuple[dict[str, Any], list[Path]]:
    """Write the PNG plots and ``plots.json``; return ``{figure: {panel: [legend entries]}}``
    and the paths written."""
    figures = figure_specs(runs, varying, sweep_name)
    written = draw(figures, folder)
    index = {f.file: {title: [s.label for s in series] for title, series in f.panels.items()}
             for f in figures}
    (folder / "plots.json").write_text(json.dumps(index, indent=1) + "\n")
    return index, [*written, folder / "plots.json"]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=prog_name("choco-report", "experiments.report"),
                       description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a sweep's output folder")
    p.add_argument("--target-accuracy", type=float, default=0.9,
                   help="accuracy of x̄ for the 'MiB to target' column (training)")
    p.add_argument("--target-reduction", type=float, default=1e6,
                   help="error reduction for the 'bytes to target' column (consensus)")
    p.add_argument("--baseline", default=None, metavar="KEY=VALUE",
                   help="add a column 'x fewer bytes than' the run with this option value "
                   "(e.g. algorithm=exact), compared at the target accuracy (training)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG files")
    p.add_argument("--copy-plots", metavar="DIR", default=None,
                   help="also copy the PNG plots to DIR as <sweep name>_<plot>.png "
                   "(e.g. docs/img for docs/results.md)")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    args = p.parse_args(argv)

    def go() -> int:
        folder = Path(args.folder)
        runs, varying = load_runs(folder)
        kinds = {r["kind"] for r in runs}
        if len(kinds) != 1:
            raise UsageError(f"{folder} mixes run kinds {sorted(kinds)}; report one sweep.")
        kind = kinds.pop()
        records = summarize(runs, varying, args.target_accuracy, args.target_reduction)
        if args.baseline:
            add_factor(records, args.baseline)
        with open(folder / "runs.csv", "w", newline="") as fh:
            fields = list(dict.fromkeys(k for rec in records for k in rec))
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
        table = markdown(records, varying, kind, args.target_accuracy, args.target_reduction)
        (folder / "report.md").write_text(table)
        written = [folder / "runs.csv", folder / "report.md"]
        if not args.no_plots:
            name = json.loads((folder / "sweep.json").read_text())["name"]
            index, files = plot(runs, varying, folder, name)
            written += files
            simulated = plot_simulated(runs, varying, folder)
            index.update({png: {} for png in simulated})
            written += [folder / png for png in simulated]
            if args.copy_plots:
                target = Path(args.copy_plots)
                target.mkdir(parents=True, exist_ok=True)
                for png in index:
                    shutil.copyfile(folder / png, target / f"{name}_{png}")
                    written.append(target / f"{name}_{png}")
        if not args.quiet:
            print(table, end="", flush=True)
        for path in written:  # on stderr: stdout is the table alone (readme_tables.py)
            print(f"wrote {path}", file=sys.stderr, flush=True)
        return 0

    return run_local(go)


if __name__ == "__main__":
    sys.exit(main())

"""The data of a sweep's runs as plot series, and the PNG figures of ``experiments.report``.

:func:`figure_specs` turns the runs into :class:`Figure` descriptions (titles, axes, one
panel per topology, one :class:`Series` per run) and :func:`draw` renders them with
matplotlib. Units are those of the report's table: accuracy in %, MiB per node, bytes per
node for consensus. Two kinds of run get special treatment:

* a run that sends nothing (``local``: 0 bytes) has no place on a log bytes axis; on the
  bytes plots it is a dashed horizontal line at its final value, labelled as such;
* a diverged run (non-finite loss) ends with an × at its last finite point and says in its
  legend entry in which epoch it diverged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: options that pick a plot panel rather than a line
PANEL_KEYS = ("topology", "mixing")
MIB = 2**20


def label(run: dict[str, Any], varying: list[str]) -> str:
    """A line's legend: the varying options except the panel's, e.g. ``choco sign``."""
    parts = []
    for key in varying:
        if key in PANEL_KEYS:
            continue
        value = run["options"].get(key)
        if value is None:
            continue
        parts.append(f"γ={value}" if key == "gamma" else f"{key}={value}"
                     if key in ("seed", "lr", "nodes", "partition") else str(value))
    return " ".join(parts) or run["name"]


def panel(run: dict[str, Any]) -> str:
    opts = run["options"]
    return " ".join(str(opts[k]) for k in PANEL_KEYS if k in opts) or "all"


def train_series(run: dict[str, Any]) -> dict[str, list[Any]]:
    """The columns of a training run's ``metrics.jsonl`` (None where a row has no value)."""
    rows = [json.loads(x) for x in (run["folder"] / "metrics.jsonl").read_text().splitlines()
            if x.strip()]
    return {"epoch": [r["epoch"] for r in rows],
            "accuracy": [r.get("test_accuracy") for r in rows],
            "local": [r.get("test_accuracy_local") for r in rows],
            "perplexity": [r.get("test_perplexity") for r in rows],
            "consensus": [r.get("consensus_distance") for r in rows],
            "bytes": [r["bytes_sent"] for r in rows],
            "time": [r["wall_time_s"] for r in rows],
            "sim": [r.get("sim_time_s") for r in rows]}


def consensus_series(run: dict[str, Any]) -> dict[str, Any]:
    """Error per round of a consensus run and the bytes per node sent up to each round."""
    data = np.load(run["folder"] / "consensus.npz")
    error = data["error"]
    steps = len(error) - 1
    per_step = float(data["bytes_sent"].mean()) / max(steps, 1)
    return {"step": np.arange(steps + 1), "error": error,
            "bytes": np.arange(steps + 1) * per_step,
            "sim": data["sim_time_s"] if "sim_time_s" in data.files else None}


@dataclass
class Series:
    """One run in one panel: a line, or a level (dashed horizontal line) for a run that sends
    nothing on a bytes axis; ``last`` is the × of a diverged run."""

    label: str
    xs: list[float]
    ys: list[float]
    level: float | None = None
    last: tuple[float, float] | None = None


@dataclass
class Figure:
    """One PNG file: a title, axes, and a panel (with its series) per topology."""

    file: str
    title: str
    xlabel: str
    ylabel: str
    logx: bool
    logy: bool
    panels: dict[str, list[Series]] = field(default_factory=dict)
    #: a dot on every point (training: one per epoch); consensus lines have hundreds
    markers: bool = True


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _title(sweep_name: str, what: str, runs: list[dict[str, Any]]) -> str:
    """``NAME (P partition)`` (the partition when every run uses the same one), then on a
    second line what is plotted."""
    parts = {r["options"].get("partition") for r in runs}
    extra = f" ({parts.pop()} partition)" if len(parts) == 1 and None not in parts else ""
    return f"{sweep_name}{extra}\n{what}"


def _train_quality(runs: list[dict[str, Any]]) -> tuple[str, str, float]:
    """The plotted quality: accuracy in % when any run has one, else perplexity."""
    if any(_finite(a) for r in runs for a in train_series(r)["accuracy"]):
        return "accuracy", "test accuracy of x̄ (%)", 100.0
    return "perplexity", "test perplexity of x̄", 1.0


def _series(text: str, xs: list[float], ys: list[float], diverged_epoch: Any,
            logx: bool) -> Series:
    if logx and xs and max(xs) <= 0:  # sends nothing: a level at its final value
        final = next((y for y in reversed(ys) if _finite(y)), None)
        return Series(f"{text}: sends 0 bytes (dashed: final value)", [], [], level=final)
    if logx:  # a log axis has no place for 0 bytes
        xs, ys = [x for x in xs if x > 0], [y for x, y in zip(xs, ys, strict=True) if x > 0]
    series = Series(text, list(xs), list(ys))
    if diverged_epoch is not None:
        finite = [i for i, y in enumerate(ys) if _finite(y)]
        series.label = f"{text} (diverged in epoch {diverged_epoch}, ×)"
        series.last = (xs[finite[-1]], ys[finite[-1]]) if finite else None
    return series


def figure_specs(runs: list[dict[str, Any]], varying: list[str],
                 sweep_name: str) -> list[Figure]:
    """Every figure of the report, with its data, ready for :func:`draw`."""
    kind = runs[0]["kind"]
    panels = sorted({panel(r) for r in runs})
    if kind == "train":
        key, ylabel, scale = _train_quality(runs)
        what = ylabel.split(" (")[0]
        figures = [Figure("accuracy_vs_epoch.png", _title(sweep_name, f"{what} per epoch", runs),
                          "epoch", ylabel, False, key == "perplexity"),
                   Figure("accuracy_vs_bytes.png",
                          _title(sweep_name, f"{what} vs MiB sent per node", runs),
                          "MiB sent per node", ylabel, True, key == "perplexity")]
    else:
        ylabel = "(1/n) Σ‖x_i − x̄⁰‖²"
        figures = [Figure("error_vs_steps.png", _title(sweep_name, "consensus error per round",
                                                       runs), "gossip round t", ylabel,
                          False, True),
                   Figure("error_vs_bytes.png", _title(sweep_name, "consensus error vs bytes "
                                                       "sent per node", runs),
                          "bytes sent per node", ylabel, True, True)]
        for fig in figures:
            fig.markers = False
    for fig in figures:
        for title in panels:
            fig.panels[title] = []
            for run in (r for r in runs if panel(r) == title):
                text = label(run, varying)
                diverged = None
                if kind == "train":
                    s = train_series(run)
                    diverged = s["epoch"][-1] if run.get("status") == "diverged" else None
                    ys = [scale * v if _finite(v) else math.nan for v in s[key]]
                    xs = s["epoch"] if fig.xlabel == "epoch" else [b / MIB for b in s["bytes"]]
                else:
                    c = consensus_series(run)
                    ys = [float(e) if e > 0 else math.nan for e in c["error"]]
                    xs = [float(x) for x in c["step" if "steps" in fig.file else "bytes"]]
                fig.panels[title].append(_series(text, xs, ys, diverged, fig.logx))
    return figures


def draw(figures: list[Figure], folder: Path) -> list[Path]:
    """Write every figure as ``folder/FILE``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written = []
    for spec in figures:
        n = len(spec.panels)
        fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.6), squeeze=False)
        for ax, (title, series) in zip(axes[0], spec.panels.items(), strict=True):
            for i, s in enumerate(series):
                color = colors[i % len(colors)]  # one colour per run, its × included
                if s.level is not None:
                    ax.axhline(s.level, color=color, linestyle="--", label=s.label)
                    continue
                ax.plot(s.xs, s.ys, color=color, label=s.label,
                        marker="." if spec.markers else None)
                if s.last is not None:  # a filled ×, edged in black to stand out of the lines
                    ax.plot(*s.last, color=color, marker="X", markersize=12,
                            markeredgecolor="black", markeredgewidth=1, linestyle="none",
                            zorder=5)
            ax.set_title(title)
            ax.set_xlabel(spec.xlabel)
            ax.set_ylabel(spec.ylabel)
            if spec.logx:
                ax.set_xscale("log")
            if spec.logy:
                ax.set_yscale("log")
            if spec.xlabel == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            # under the panel, so that no line is hidden behind it
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                      frameon=False)
        fig.suptitle(spec.title)
        fig.tight_layout()
        fig.savefig(folder / spec.file, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(folder / spec.file)
    return written

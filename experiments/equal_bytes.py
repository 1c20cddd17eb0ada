"""Compare a sweep's training runs at an equal bytes budget, one table per data split.

    python -m experiments.equal_bytes DIR [--budget-of choco:sign] [--out FILE.md]

``DIR`` is a sweep's output folder (``python -m experiments.sweep``), e.g. of
``experiments/configs/small_heterogeneous.toml``. For every ``partition`` the budget B is what
the reference run (``--budget-of``, default CHOCO-sign with one round per step) sent per node
over its whole run. Each run's row gives its final accuracy of x̄, the MiB it sent, the reference's
accuracy after sending as much (its last epoch within those bytes), and its accuracy at the
budget: the test accuracy of x̄ after the last epoch whose cumulative bytes
are ≤ B (empty if even its first epoch sends more). "gap closed" is
(acc at B − acc of the reference) / (final acc of all-reduce − acc of the reference): the
share of the reference's gap to all-reduce that a method closes at the same bytes. Writes the
Markdown table (also printed) and ``equal_bytes_<partition>.png`` (accuracy vs epoch and vs
MiB per node) into ``DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from choco.run.cli import ArgumentParser, run_local

from .report import MIB, load_runs, train_series


def method(options: dict[str, Any], epochs: int | None = None) -> str:
    """A short name: ``choco sign``, ``beer sign``, ``choco sign H=8 + outer nesterov:lr=1``;
    ``(60 epochs)`` is added when a run's epochs differ from ``epochs``."""
    name = options.get("algorithm", "choco")
    if "compressor" in options and name in ("choco", "beer", "dcd", "ecd"):
        name += f" {options['compressor']}"
    if options.get("momentum_mode", "local") != "local":
        name += " + QGM"
    if int(options.get("gossip_every", 1)) > 1:
        name += f" H={options['gossip_every']}"
    if options.get("outer"):
        name += f" + outer {options['outer']}"
    if any(k in str(options.get("topology", "")) for k in ("onepeer", "matching", "base:", "+pga")):
        name += f" on {options['topology']}"  # a schedule (small_noloco.toml)
    if epochs is not None and options.get("epochs") not in (None, epochs):
        name += f" ({options['epochs']} epochs)"
    return name


def _acc_within(series: dict[str, list], budget: float) -> tuple[float | None, int]:
    """Accuracy after the last epoch within ``budget`` bytes, and that epoch (0: none)."""
    acc, epoch = None, 0
    for e, a, b in zip(series["epoch"], series["accuracy"], series["bytes"], strict=True):
        if b <= budget * (1 + 1e-9):
            acc, epoch = a, e
    return acc, epoch


Series = dict[str, dict[str, list]]  # method name -> train_series of its run


def table(runs: list[dict[str, Any]], reference: str) -> tuple[str, dict[str, Series]]:
    """The Markdown tables (one per partition) and the series per partition for plots."""
    parts: dict[str, list] = {}
    for run in runs:
        parts.setdefault(run["options"].get("partition", "iid"), []).append(run)
    out: list[str] = []
    series_by_part: dict[str, Series] = {}
    for part, members in sorted(parts.items()):
        counts: dict[Any, int] = {}
        for r in members:
            counts[r["options"].get("epochs")] = counts.get(r["options"].get("epochs"), 0) + 1
        usual = max(counts, key=lambda e: counts[e])
        rows = {method(r["options"], usual): train_series(r) for r in members}
        series_by_part[part] = rows
        ref, allreduce = rows.get(reference), rows.get("allreduce")
        if ref is None:
            out.append(f"partition {part}: no run named {reference!r}; runs: "
                       f"{', '.join(rows)}\n")
            continue
        budget = ref["bytes"][-1]
        ref_acc = ref["accuracy"][-1]
        gap = None if allreduce is None else allreduce["accuracy"][-1] - ref_acc
        out.append(f"**partition {part}**: budget B = {budget / MIB:.3f} MiB per node "
                   f"(what {reference} sends in {ref['epoch'][-1]} epochs)\n")
        out.append(f"| method | final acc (x̄) | MiB/node | {reference} at these MiB | "
                   "acc at B | epochs within B | gap closed at B |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for name, s in rows.items():
            acc_b, epoch_b = _acc_within(s, budget)
            closed = ("" if acc_b is None or not gap else
                      f"{(acc_b - ref_acc) / gap:+.2f}")
            if name == "allreduce":
                closed = "(reference: 1)"
            elif name == reference:
                closed = "(reference: 0)"
            ref_here, _ = _acc_within(ref, s["bytes"][-1])
            out.append(f"| {name} | {100 * s['accuracy'][-1]:.1f} % | "
                       f"{s['bytes'][-1] / MIB:.3f} | "
                       f"{'' if ref_here is None else f'{100 * ref_here:.1f} %'} | "
                       f"{'' if acc_b is None else f'{100 * acc_b:.1f} %'} | {epoch_b} | "
                       f"{closed} |")
        out.append("")
    return "\n".join(out), series_by_part


def plot(series_by_part: dict[str, Series], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for part, rows in series_by_part.items():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
        for name, s in rows.items():
            acc = [float("nan") if a is None else 100 * a for a in s["accuracy"]]
            ax1.plot(s["epoch"], acc, marker=".", label=name)
            pts = [(b / MIB, a) for b, a in zip(s["bytes"], acc, strict=True) if b > 0]
            if pts:
                ax2.plot(*zip(*pts, strict=True), marker=".", label=name)
        ax1.set_xlabel("epoch")
        ax2.set_xlabel("MiB sent per node")
        ax2.set_xscale("log")
        for ax in (ax1, ax2):
            ax.set_ylabel("test accuracy of x̄ (%)")
            ax.grid(True, alpha=0.3)
            ax.set_title(f"partition {part}")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"equal_bytes_{part.replace(':', '')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.equal_bytes",
                       description=__doc__.split("\n\n")[2])
    p.add_argument("folder", type=Path, help="a sweep's output folder")
    p.add_argument("--budget-of", default="choco sign",
                   help="the run (method name as in the table) whose bytes are the budget "
                   "(default: 'choco sign')")
    p.add_argument("--no-plots", action="store_true", help="only the table")
    args = p.parse_args(argv)

    def go() -> int:
        runs, _ = load_runs(args.folder)
        text, series = table([r for r in runs if r.get("kind", "train") == "train"],
                             args.budget_of)
        (args.folder / "equal_bytes.md").write_text(text + "\n")
        print(text)
        if not args.no_plots:
            for path in plot(series, args.folder):
                print(f"wrote {path}")
        return 0

    return run_local(go)


if __name__ == "__main__":
    sys.exit(main())

"""experiments.report on hand-written run folders: units, time columns, notes, titles,
zero-byte and diverged runs, the files it says it wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.plots import MIB, figure_specs
from experiments.report import load_runs
from experiments.report import main as report

#: per run: options, status, (accuracy, MiB sent, wall time) per epoch, the sweep's seconds
RUNS: dict[str, tuple[dict[str, str], str, list[tuple[float | None, float, float]], float]] = {
    "choco_sign_a": ({"algorithm": "choco", "compressor": "sign"}, "finished",
                     [(0.5, 0.25, 1.0), (0.8, 0.5, 2.0), (0.925, 0.75, 3.25)], 17.5),
    "exact_b": ({"algorithm": "exact"}, "finished",
                [(0.6, 8.0, 1.5), (0.9, 16.0, 2.5), (0.95, 24.0, 4.0)], 12.0),
    "local_c": ({"algorithm": "local"}, "finished",
                [(0.3, 0.0, 0.5), (0.35, 0.0, 1.0), (0.4, 0.0, 1.5)], 6.0),
    "dcd_randk_d": ({"algorithm": "dcd", "compressor": "randk:0.1"}, "diverged",
                    [(0.45, 0.1, 1.0), (0.55, 0.2, 2.0), (None, 0.3, 2.75)], 9.0),
}


def make_sweep(folder: Path, partition: str | None = "by-class") -> Path:
    """A sweep folder as experiments.sweep leaves it, with known metrics."""
    base: dict[str, Any] = {"topology": "ring:4", "epochs": 3}
    if partition:
        base["partition"] = partition
    entries = []
    for index, (name, (options, status, rows, seconds)) in enumerate(RUNS.items()):
        opts = {**base, **options}
        entries.append({"index": index, "name": name, "options": opts})
        run = folder / name
        run.mkdir(parents=True)
        lines = []
        for epoch, (acc, mib, wall) in enumerate(rows, 1):
            row: dict[str, Any] = {"epoch": epoch, "train_loss": 1.0 / epoch,
                                   "consensus_distance": 0.5, "bytes_sent": mib * MIB,
                                   "wall_time_s": wall, "lr": 0.05}
            if acc is None:
                row.update(train_loss=None, diverged=True)
            else:
                row.update(test_accuracy=acc, test_accuracy_local=acc - 0.05)
            lines.append(json.dumps(row))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (run / "result.json").write_text(json.dumps({
            "name": name, "index": index, "kind": "train", "status": status,
            "exit": 3 if status == "diverged" else 0, "seconds": seconds, "options": opts,
            "summary": {"epoch": len(rows)}}))
    (folder / "sweep.json").write_text(json.dumps({"sweep": "x.toml", "kind": "train",
                                                   "name": "mysweep", "runs": entries}))
    return folder


def table_rows(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True))
        rows[f"{cells['algorithm']} {cells['compressor']}"] = cells
    return rows


def test_table_in_percent_with_named_time_columns_and_notes(tmp_path, capsys):
    folder = make_sweep(tmp_path / "sweep")
    assert report([str(folder), "--no-plots"]) == 0
    captured = capsys.readouterr()
    rows = table_rows(captured.out)
    choco = rows["choco sign"]
    assert choco["final acc x̄ %"] == "92.50" and choco["best acc x̄ %"] == "92.50"
    assert choco["acc local %"] == "87.50"
    assert rows["exact -"]["MiB/node to 90 %"] == "16.000"  # first epoch at >= 0.9
    assert choco["MiB/node to 90 %"] == "0.750" and rows["local -"]["MiB/node"] == "0.000"
    # the two times: the epochs (metrics.jsonl) and the whole process (the sweep's seconds)
    assert [choco["train loop s"], choco["run s"]] == ["3.2", "17.5"]  # 3.25 → 3.2 (even)
    assert [rows["exact -"]["train loop s"], rows["exact -"]["run s"]] == ["4.0", "12.0"]
    dcd = rows["dcd randk:0.1"]
    assert dcd["final acc x̄ %"] == "diverged (epoch 3)" and dcd["best acc x̄ %"] == ""
    assert [dcd["MiB/node"], dcd["train loop s"], dcd["run s"]] == ["0.300", "2.8", "9.0"]
    notes = [line for line in captured.out.splitlines() if line.startswith("- ")]
    assert any(n.startswith("- train loop s: ") and "run s: " in n and "γ tuner" in n
               for n in notes)
    assert any("diverged (epoch N)" in n and "×" in n for n in notes)
    assert any("MiB/node 0" in n and "dashed" in n for n in notes)
    # report.md is what was printed; every file written is named on stderr
    assert (folder / "report.md").read_text() == captured.out
    wrote = [line.removeprefix("wrote ") for line in captured.err.splitlines()]
    assert sorted(wrote) == sorted([str(folder / "runs.csv"), str(folder / "report.md")])


def test_notes_only_for_what_the_table_shows(tmp_path, capsys):
    folder = make_sweep(tmp_path / "sweep")
    for name in ("local_c", "dcd_randk_d"):
        (folder / name / "result.json").unlink()  # not finished: not in the report
    assert report([str(folder), "--no-plots"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- ")]
    assert len(notes) == 1 and notes[0].startswith("- train loop s: ")


def test_plots_name_the_sweep_mark_diverged_and_zero_byte_runs(tmp_path, capsys):
    folder = make_sweep(tmp_path / "sweep")
    assert report([str(folder), "--copy-plots", str(tmp_path / "img")]) == 0
    runs, varying = load_runs(folder)
    figures = {f.file: f for f in figure_specs(runs, varying, "mysweep")}
    assert set(figures) == {"accuracy_vs_epoch.png", "accuracy_vs_bytes.png"}
    for fig in figures.values():
        assert fig.title.splitlines()[0] == "mysweep (by-class partition)"
        assert fig.ylabel == "test accuracy of x̄ (%)"
        assert list(fig.panels) == ["ring:4"]
    epoch = {s.label.split(" (")[0]: s for s in figures["accuracy_vs_epoch.png"].panels["ring:4"]}
    assert epoch["choco sign"].xs == [1, 2, 3]
    assert epoch["choco sign"].ys == pytest.approx([50.0, 80.0, 92.5])  # %, as the table
    # the diverged run: its line ends, an × at the last finite point, the epoch in the legend
    dcd = epoch["dcd randk:0.1"]
    assert dcd.last is not None and "diverged in epoch 3" in dcd.label
    assert dcd.last[0] == 2 and dcd.last[1] == pytest.approx(55.0)
    assert epoch["local"].level is None and epoch["local"].last is None
    by_bytes = {s.label.split(":")[0].split(" (")[0]: s
                for s in figures["accuracy_vs_bytes.png"].panels["ring:4"]}
    # no communication: no point on a log bytes axis, a level at its final accuracy instead
    local = by_bytes["local"]
    assert local.level == pytest.approx(40.0) and local.xs == [] and "0 bytes" in local.label
    assert by_bytes["exact"].xs == [8.0, 16.0, 24.0]
    last = by_bytes["dcd randk"].last
    assert last is not None and last == pytest.approx((0.2, 55.0))
    # plots.json lists the legend entries; every file written is named and exists
    index = json.loads((folder / "plots.json").read_text())
    assert index["accuracy_vs_bytes.png"]["ring:4"] == [
        s.label for s in figures["accuracy_vs_bytes.png"].panels["ring:4"]]
    wrote = [Path(line.removeprefix("wrote ")) for line in capsys.readouterr().err.splitlines()]
    expected = {folder / n for n in ("runs.csv", "report.md", "plots.json", *figures)}
    expected |= {tmp_path / "img" / f"mysweep_{n}" for n in figures}
    assert set(wrote) == expected and len(wrote) == len(expected)
    for path in wrote:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_title_has_no_partition_when_runs_differ_or_have_none(tmp_path):
    folder = make_sweep(tmp_path / "none", partition=None)
    runs, varying = load_runs(folder)
    assert all("partition" not in f.title for f in figure_specs(runs, varying, "s"))
    result = folder / "exact_b" / "result.json"
    data = json.loads(result.read_text())
    data["options"]["partition"] = "iid"
    result.write_text(json.dumps(data))
    runs, varying = load_runs(folder)
    assert "partition" in varying
    assert all("partition)" not in f.title for f in figure_specs(runs, varying, "s"))

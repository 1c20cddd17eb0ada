"""``python -m experiments.equal_bytes``: accuracy at the reference run's bytes budget."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.equal_bytes import main

#: (name, options, [(bytes, accuracy) per epoch])
RUNS = [
    ("ref", {"algorithm": "choco", "compressor": "sign", "epochs": 4},
     [(10, 0.5), (20, 0.6), (30, 0.7), (40, 0.8)]),
    ("ar", {"algorithm": "allreduce", "epochs": 4}, [(100, 0.8), (200, 0.9), (300, 0.95),
                                                    (400, 1.0)]),
    ("two", {"algorithm": "beer", "compressor": "sign", "epochs": 4},
     [(20, 0.7), (40, 0.9), (60, 0.95), (80, 0.99)]),
]


def make_sweep(folder: Path) -> None:
    entries = []
    for i, (name, options, epochs) in enumerate(RUNS):
        run = folder / name
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e + 1, "test_accuracy": a, "bytes_sent": b,
                        "wall_time_s": 1.0}) + "\n" for e, (b, a) in enumerate(epochs)))
        (run / "result.json").write_text(json.dumps(
            {"name": name, "index": i, "kind": "train", "status": "finished",
             "options": {**options, "partition": "by-class"}}))
        entries.append({"index": i, "name": name, "options": options})
    (folder / "sweep.json").write_text(json.dumps({"kind": "train", "runs": entries}))


def test_accuracy_at_the_budget_and_the_gap_closed(tmp_path, capsys):
    make_sweep(tmp_path)
    assert main([str(tmp_path), "--no-plots"]) == 0
    text = (tmp_path / "equal_bytes.md").read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    row = next(line for line in text.splitlines() if line.startswith("| beer sign"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # budget B = 40 bytes (the reference's last epoch): beer's last epoch within B is 2 (0.9);
    # the reference at beer's 80 bytes is its last epoch (0.8); all-reduce ends at 1.0, the
    # reference at 0.8: gap closed (0.9 − 0.8) / (1.0 − 0.8) = 0.5
    assert cells[1] == "99.0 %" and cells[3] == "80.0 %"
    assert cells[4] == "90.0 %" and cells[5] == "2" and cells[6] == "+0.50"
    ar = [c.strip() for c in next(line for line in text.splitlines()
                                  if line.startswith("| allreduce")).strip("|").split("|")]
    assert ar[4] == "" and ar[5] == "0"  # its first epoch alone sends more than B

"""Final accuracy of each algorithm × compressor on the default task (digits MLP, ring:8).

    python experiments/default_table.py [--epochs 60] [--out runs/table] [--configs ...]
                                        [any choco-train option ...]

Runs every configuration with the in-process backend (same per-node code as MPI) and prints
a Markdown table: test accuracy of the network average x̄ and the mean over nodes of each
node's own model, consensus distance, MiB sent per node, γ and wall time. Every option this
script does not know is passed through to every ``choco-train`` run (e.g. ``--topology social
--mixing maxdegree``). ``--configs`` picks the rows: space-separated
``ALGORITHM[/COMPRESSOR[/GAMMA]]``, e.g. ``"allreduce exact choco/sign/0.5 choco/sign"``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from choco.run.train import main as train

CONFIGS = [
    ("allreduce", "-", []),
    ("exact", "-", []),
    ("choco", "identity", ["--gamma", "1"]),
    ("choco", "sign", []),
    ("choco", "topk:0.01", []),
    ("choco", "topk:0.01+natural", []),
    ("choco", "randk:0.1", []),
    ("choco", "qsgd:16", []),
    ("dcd", "sign", []),
    ("dcd", "randk:0.1", []),
    ("ecd", "qsgd:16", []),
    ("local", "-", []),
]


def parse_configs(text: str) -> list[tuple[str, str, list[str]]]:
    """``"choco/sign/0.5 exact"`` → ``[("choco", "sign", ["--gamma", "0.5"]),
    ("exact", "-", [])]``."""
    out = []
    for item in text.split():
        algorithm, _, rest = item.partition("/")
        compressor, _, gamma = rest.partition("/")
        out.append((algorithm, compressor or "-", ["--gamma", gamma] if gamma else []))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other option is passed through to each choco-train run "
        "(see choco-train --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", default="60", help="epochs of every run")
    p.add_argument("--out", default="runs/table", help="folder of the runs' output folders")
    p.add_argument("--configs", default=None,
                   help="rows as ALGORITHM[/COMPRESSOR[/GAMMA]] separated by spaces "
                   "(default: the 12 rows of CONFIGS)")
    args, extra = p.parse_known_args(argv)
    configs = parse_configs(args.configs) if args.configs else CONFIGS
    rows = []
    for algorithm, compressor, options in configs:
        name = "-".join([algorithm, compressor.replace(":", ""), *options[1:]])
        folder = Path(args.out) / name
        cmd = ["--algorithm", algorithm, "--epochs", args.epochs, "--out", str(folder),
               "--quiet", *options, *extra]
        if compressor != "-":
            cmd += ["--compressor", compressor]
        code = train(cmd)
        if code != 0:
            rows.append((algorithm, compressor, f"exit {code}", "", "", "", "", ""))
            continue
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        info = json.loads((folder / "config.json").read_text())
        status = f"diverged (epoch {last['epoch']})" if last.get("diverged") else \
            f"{100 * last['test_accuracy']:.2f}"
        local = "" if last.get("diverged") else f"{100 * last['test_accuracy_local']:.2f}"
        cd = last["consensus_distance"]
        rows.append((algorithm, compressor, status, local,
                     "" if cd is None else f"{cd:.3g}",
                     f"{last['bytes_sent'] / 2**20:.3f}",
                     "" if info["gamma"] is None else f"{info['gamma']:.3g}",
                     f"{last['wall_time_s']:.1f}"))
    header = ("algorithm", "compressor", "acc x̄ %", "acc local %", "consensus dist.",
              "MiB sent/node", "γ", "time s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run under ``mpiexec -n 4 python -m mpi4py tests/mpi/algos_equiv_check.py OUTDIR ARGS...``.

Runs ``choco-train --backend mpi ARGS CASE --out OUTDIR/NAME`` for every case of
:data:`CASES` (outer step, gradient tracking, BEER with quasi-global momentum, the outer step
on time-varying graphs: NoLoCo-like) in one launch;
``tests/test_outer.py`` runs the same in process and compares bit for bit. Exits with the
first non-zero exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path

from choco.train import main

#: (name, options): shared with tests/test_outer.py and tests/torchrun/algos_check.py
CASES = [
    ("outer", ["--algorithm", "choco", "--compressor", "sign", "--gamma", "0.5",
               "--gossip-every", "8", "--outer", "nesterov:lr=0.7,momentum=0.9"]),
    ("gt", ["--algorithm", "gt"]),
    ("beer_qgm", ["--algorithm", "beer", "--compressor", "topk:0.1", "--gamma", "0.3",
                  "--momentum-mode", "quasi-global"]),
    # the outer step on a schedule (the later --topology overrides the shared ring:4)
    ("noloco", ["--algorithm", "choco", "--compressor", "sign", "--gamma", "0.5",
                "--topology", "matching:4", "--gossip-every", "4",
                "--outer", "nesterov:lr=0.7,momentum=0.9"]),
    ("onepeer_exact_sync", ["--algorithm", "exact", "--topology", "onepeer:4", "--order",
                            "sync", "--gossip-every", "3", "--outer",
                            "sgd:lr=0.8,momentum=0.5", "--momentum-mode", "quasi-global"]),
]


def run_all(out: Path, args: list[str]) -> int:
    for name, options in CASES:
        code = main([*args, *options, "--backend", "mpi", "--out", str(out / name)])
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_all(Path(sys.argv[1]), sys.argv[2:]))

"""Run under ``mpiexec -n 4 python -m mpi4py tests/mpi/train_equiv_check.py OUTDIR ARGS...``.

Runs ``choco-train --backend mpi ARGS --compressor C --out OUTDIR/C`` for every compressor
C of :data:`COMPRESSORS` in one launch (each launch costs seconds: every rank imports
torch). ``tests/test_mpi_train.py`` runs the same options in process (``--backend local``)
and compares the outputs bit for bit. Exits with the first non-zero exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path

from choco.train import main

#: (compressor, gamma) pairs, shared with tests/test_mpi_train.py
COMPRESSORS = [("sign", "0.5"), ("topk:0.05", "0.2"), ("lgc:warmup=30", "0.05")]


def run_all(out: Path, args: list[str]) -> int:
    for spec, gamma in COMPRESSORS:
        code = main([*args, "--backend", "mpi", "--compressor", spec, "--gamma", gamma,
                     "--out", str(out / spec.replace(":", "_"))])
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_all(Path(sys.argv[1]), sys.argv[2:]))

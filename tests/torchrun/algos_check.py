"""Run under ``torchrun --standalone --nproc-per-node 4 tests/torchrun/algos_check.py OUTDIR
ARGS...``.

The cases of ``tests/mpi/algos_equiv_check.py`` (outer step, gradient tracking, BEER with
quasi-global momentum) over torch.distributed (gloo), one ``choco-train`` run each into
``OUTDIR/NAME``, in one launch; ``tests/test_outer.py`` compares them with the in-process
runs bit for bit. The whole script runs under :func:`choco.run.launch.run_torch`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the tests package

from choco.run.config import parse_config
from choco.run.launch import run_torch
from choco.run.launch.world import torch_world
from choco.run.train import train_world
from tests.mpi.algos_equiv_check import CASES


def run_all(out: Path, args: list[str]) -> int:
    for name, options in CASES:
        cfg = parse_config([*args, *options, "--backend", "torch", "--out", str(out / name)])
        code = train_world(cfg, torch_world(cfg.device))
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_torch(lambda: run_all(Path(sys.argv[1]), sys.argv[2:])))

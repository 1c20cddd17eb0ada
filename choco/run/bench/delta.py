"""``python -m choco.bench delta``: measured vs documented contraction of every compressor.

For each spec, on ``x ~ N(0, 1)`` of ``--numel`` entries (2^20 by default, the size of
the table in docs/compressors.md), reports the documented worst-case ``δ``
(:meth:`Compressor.delta`),
the measured ``δ̂ = 1 - mean_s ||Q_s(x) - x||^2 / ||x||^2`` over ``--seeds`` seeds, and the
bits per element on the wire. For unbiased families it also reports the variance ``ω̂`` of
the raw form measured the same way, against the documented ``ω``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ...compress import is_raw, make_compressor
from ...compress.stateful import prepare_alone
from ...errors import UsageError
from . import specs
from .compressors import check_numel

HELP = "measure each compressor's contraction δ on N(0, 1) against the documented bound"
#: memory per element: x, its float64 copy, each Q_s(x) in float64 and its difference
#: (measured: 27 bytes with identity)
BYTES_PER_ELEMENT = 40

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--numel", type=int, default=1 << 20, help="vector length d")
    p.add_argument("--seeds", type=int, default=3, help="compressor seeds to average over")
    p.add_argument("--specs", default=",".join(specs.DELTA), help="comma-separated specs")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")


def relative_error(spec: str, x: torch.Tensor, seeds: int) -> float:
    # lgc: trained on x for its warm-up, then frozen (no network here)
    q = prepare_alone(make_compressor(spec), x)
    x64 = x.double()
    norm2 = float(x64 @ x64)
    errs = [float(((q(x, seed=s).double() - x64) ** 2).sum()) / norm2 for s in range(seeds)]
    return float(np.mean(errs))


def run(args: argparse.Namespace) -> int:
    for option, value, example in (("--numel", args.numel, 1 << 20), ("--seeds", args.seeds, 3)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}; e.g. {option} {example}.")
    compressors = specs.parse_specs(args.specs)  # every spec validated first
    check_numel(args.numel, BYTES_PER_ELEMENT)
    x = torch.randn(args.numel, generator=torch.Generator().manual_seed(0))
    d = args.numel
    rows = []
    for q in compressors:
        row = {"spec": q.spec, "bits_per_element": 8 * q.nbytes(d) / d,
               "delta": q.delta(d), "delta_measured": 1 - relative_error(q.spec, x, args.seeds)}
        if q.unbiased and not is_raw(q):
            row["omega"] = q.omega(d)
            row["omega_measured"] = relative_error(q.raw().spec, x, args.seeds)
        rows.append(row)
    print(f"d = {d:,}, x ~ N(0, 1), mean over {args.seeds} seeds\n")
    print("| spec | bits/elem | δ documented | δ measured | ω documented | ω measured (raw) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        omega = (f"{r['omega']:.4g} | {r['omega_measured']:.4g}" if "omega" in r else "– | –")
        print(f"| `{r['spec']}` | {r['bits_per_element']:.4g} | {r['delta']:.4g} | "
              f"{r['delta_measured']:.4f} | {omega} |")
    if args.json:
        print(json.dumps({"numel": d, "seeds": args.seeds, "rows": rows}))
    return 0

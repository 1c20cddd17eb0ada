"""``python -m choco.compress SPEC --in X.npy --out Y.npy [--seed S]``: apply one compressor.

Reads a 1-D float array (float16, float32 or float64), encodes it with ``SPEC`` and writes
``Q(x)`` decoded back to the input's shape and dtype. The last line on stdout is one JSON
object with ``spec`` (canonical), ``numel``, ``nbytes`` (the encoded buffer's length, header
included), ``delta`` (the documented contraction for this ``d``), ``bits_per_element``,
``error`` (``||Q(x) - x||^2 / ||x||^2`` for this ``x``; ``null`` if ``x = 0``) and, for
unbiased families, ``omega``. A bad input prints one paragraph on stderr and exits with
status 2 without writing the output. The output is checked before any work: it must not be
the input, and an existing file is replaced only with ``--overwrite``.

Examples
--------
    python -c "import numpy; numpy.save('x.npy', numpy.random.randn(1000))"
    python -m choco.compress topk:0.01+natural --in x.npy --out q.npy --seed 3
    python -m choco.compress qsgd:16:raw --in x.npy --out q.npy       # unbiased form
    python -m choco.compress sign --in x.npy --out q.npy --sizes 600,400   # per tensor
    python -m choco.compress lgc:warmup=200 --in x.npy --out q.npy   # learned, fit on x first

``lgc`` is first trained for its ``warmup`` steps on ``x`` itself (there is no network to
share it with), then frozen; the JSON then also says whether the learned code was sent
(``learned``) or the round fell back to top-k'.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..compress import PerTensor, available, make_compressor
from ..compress.base import Compressor, decode, is_raw
from ..compress.stateful import prepare_alone, state_of
from ..errors import UsageError
from ..wire.framing import parse_header
from .cli import run_local, setup_output
from .files import ArgumentParser, atomic_write, check_memory, check_output_file, load_npy

#: memory per input element: x, Q(x) in torch and numpy, float64 copies for the error
#: (a generous bound; the encoded buffer is smaller than x)
BYTES_PER_ELEMENT = 48


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m choco.compress",
        description="Compress a 1-D array with a choco compressor and write Q(x) decoded "
        "(same shape and dtype); prints one readable line, then, last on stdout, a JSON "
        "summary (spec, numel, nbytes, delta, error, ...); --json prints the JSON line only.",
        epilog="specs: " + ", ".join(available()),
    )
    p.add_argument("spec", help="compressor spec, e.g. sign, topk:0.01, qsgd:16, "
                                "topk:0.01+natural, scaled(randk:0.1:raw)")
    p.add_argument("--in", dest="inp", required=True, metavar="X.npy",
                   help="input .npy, a 1-D float array")
    p.add_argument("--out", required=True, metavar="Y.npy",
                   help="output .npy: Q(x), same shape and dtype")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (default: refuse an existing file)")
    p.add_argument("--seed", type=int, default=0, help="64-bit seed of the randomness")
    p.add_argument("--sizes", default=None,
                   help="per-tensor segments, comma-separated sizes summing to numel")
    p.add_argument("--unbiased", action="store_true",
                   help="use the unscaled unbiased form (same as the :raw suffix)")
    p.add_argument("--json", action="store_true",
                   help="print only the JSON summary, as exactly one line (without it, a "
                   "readable line comes first and the JSON line is still last)")
    return p.parse_args(argv)


def load_input(path: Path) -> np.ndarray:
    """Read and validate the input array (1-D, float16/32/64, finite)."""
    return load_npy(path, "--in", ndim=1, dtypes=(np.float16, np.float32, np.float64),
                    holding="a non-empty 1-D float array",
                    example="numpy.save('x.npy', numpy.random.randn(1000))")


def build(args: argparse.Namespace, numel: int) -> Compressor:
    """The compressor of ``args``, per tensor if ``--sizes`` is given."""
    q = make_compressor(args.spec, unbiased=args.unbiased)
    if args.sizes is None:
        return q
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or sum(sizes) != numel:
        raise UsageError(
            f"--sizes must be positive integers summing to numel = {numel}, got "
            f"{args.sizes!r}; e.g. --sizes {numel // 2},{numel - numel // 2}."
        )
    return PerTensor(q, sizes)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m choco.compress``."""
    setup_output()
    args = parse_args(argv)

    def run() -> int:
        make_compressor(args.spec, unbiased=args.unbiased)  # a bad spec is the first error
        out = check_output_file(args.out, "--out", inputs=[args.inp], overwrite=args.overwrite)
        x = load_input(Path(args.inp))
        check_memory(BYTES_PER_ELEMENT * x.size, "compressing --in",
                     f"{x.size:,} elements, about {BYTES_PER_ELEMENT} bytes each",
                     "pass a shorter --in")
        xt = torch.from_numpy(x)
        # lgc: one vector, no network: its state trains on it, then switches alone
        q = prepare_alone(build(args, x.size), xt)
        buf = q.encode(xt, args.seed)
        coding = state_of(q)
        if coding is not None:  # what a node does after sending: learn, count
            coding.observe(xt, parse_header(buf, q.spec).flags)
        y = decode(q, buf, xt.dtype, xt.device).numpy()
        atomic_write(out, lambda fh: np.save(fh, y))  # exactly this path, never half-written
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        norm2 = float(x64 @ x64)
        result = {
            "spec": q.spec, "numel": int(x.size), "nbytes": int(buf.numel()),
            "delta": q.delta(x.size), "bits_per_element": 8 * buf.numel() / x.size,
            "error": float((y64 - x64) @ (y64 - x64)) / norm2 if norm2 > 0 else None,
            "dtype": str(x.dtype), "seed": args.seed, "unbiased": q.unbiased, "raw": is_raw(q),
        }
        if q.unbiased:
            result["omega"] = q.omega(x.size)
        counts = coding.counters() if coding is not None else {}
        if "learned" in counts:
            result["learned"] = counts["learned"] == 1  # else the top-k' fallback was sent
        if args.sizes is not None:
            result["sizes"] = q.sizes  # type: ignore[attr-defined]
        if not args.json:
            error = "n/a" if result["error"] is None else f"{result['error']:.4g}"
            print(f"{q.spec}: {x.size:,} {x.dtype} elements -> {result['nbytes']:,} bytes "
                  f"({result['bits_per_element']:.3g} bits/element), relative error "
                  f"{error}; wrote {out}", flush=True)
        print(json.dumps(result), flush=True)
        return 0

    return run_local(run)


if __name__ == "__main__":
    sys.exit(main())

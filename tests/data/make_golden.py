"""Record the golden bytes of every wire format: ``python tests/data/make_golden.py``.

For a fixed list of cases (compressor spec, flat vector or per-tensor layout, dtype, input
kind, seed, host or torch kernels) this encodes a seeded input and writes, per case, the
SHA-256 and length of the encoded message and the SHA-256 of ``out + Q(x)/3`` decoded into a
fixed ``out`` to ``golden_bytes.json`` beside this script. The record is taken once, on the
code before a change of the compressors, and ``tests/test_golden_bytes.py`` re-encodes every
case and compares: a wire format that changes by one bit fails the test. Re-run this script
only when a format is changed on purpose (and say so: old and new nodes no longer agree).
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RECORD = HERE / "golden_bytes.json"

#: every family, its options and the combinators
SPECS = [
    "identity", "sign",
    "topk:0.01", "topk:0.1", "topk:1", "topk:0.01:rice", "topk:0.2:rice",
    "randk:0.01", "randk:0.3", "randk:0.05:raw",
    "randblock:0.01", "randblock:0.3", "randblock:0.1:raw",
    "natural", "natural:raw",
    "dither:8", "dither:3:b=0", "dither:8:raw",
    "qsgd:16", "qsgd:4:b=128", "qsgd:16:raw",
    "sbc:0.01", "sbc:0.1",
    "topk:0.01+natural", "topk:0.01:rice+natural", "randk:0.01+natural",
    "randblock:0.1+qsgd:16", "randk:0.1:raw+natural:raw", "topk:0.05+sign",
    "scaled(qsgd:16)", "scaled(randk:0.1:raw)", "scaled(topk:0.01)", "scaled(sign)",
]
#: per-tensor layouts: size-1 segments, byte-unaligned sizes, a model, several batched
#: blocks (segments below 2^20 in blocks of at most 2^20 elements) and segments coded alone
LAYOUTS = {
    "ones": [1] * 19,
    "mixed": [8, 9, 1, 7, 16, 3, 300, 257, 255, 1, 4099],
    "model": [432, 16, 16, 2304, 16, 16, 2304, 16, 16, 4608, 32, 32, 9216, 32, 32, 512, 32,
              32, 18432, 64, 64, 36864, 64, 64, 2048, 64, 64, 640, 10],
    "blocks": [30_000] * 40 + [1, 2, 50_001],
    "alone": [1_100_000, 5, 70_000, 1],
}
FLAT_SIZES = [1, 37, 5000, 300_000]
KINDS = ["gauss", "zeros", "ties"]
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
SEEDS = [0, 2**64 - 1]
#: lgc's messages are deterministic during its warm-up (top-k' messages)
LGC_SPECS = ["lgc:warmup=5", "lgc:ratio=0.1:latent=2:warmup=3"]


def make_input(kind: str, d: int, dtype: torch.dtype) -> torch.Tensor:
    """A seeded input: Gaussian, 80% exact zeros, or equal magnitudes of random sign."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{kind}:{d}".encode()))
    x = torch.randn(d, generator=gen) * 3
    if kind == "zeros":
        x[torch.rand(d, generator=gen) < 0.8] = 0
    elif kind == "ties":
        x = torch.where(torch.rand(d, generator=gen) < 0.5, -0.25, 0.25)
    return x.to(dtype)


def start_vector(d: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``out`` a message is decoded into: a ramp, so the add's rounding shows."""
    return torch.linspace(-1.0, 1.0, d, dtype=torch.float64).to(dtype)


def cases() -> list[dict]:
    """Every case: ``{"id", "spec", "sizes" (None: flat), "d", "dtype", "kind", "seed",
    "host"}``."""
    out = []

    def add(spec, sizes, d, dtype, kind, seed, host=True):
        where = "flat" if sizes is None else sizes
        out.append({"id": f"{spec}|{where}|{d}|{dtype}|{kind}|{seed}|"
                          f"{'host' if host else 'torch'}",
                    "spec": spec, "sizes": sizes, "d": d, "dtype": dtype, "kind": kind,
                    "seed": seed, "host": host})

    for spec in SPECS:
        for d in FLAT_SIZES:
            add(spec, None, d, "float32", "gauss", SEEDS[0])
        add(spec, None, 5000, "float32", "gauss", SEEDS[1])
        for kind in KINDS[1:]:
            add(spec, None, 5000, "float32", kind, 7)
        for dtype in ("float64", "float16"):
            add(spec, None, 5000, dtype, "gauss", 3)
        add(spec, None, 5000, "float32", "gauss", 5, host=False)
        for name, sizes in LAYOUTS.items():
            add(spec, name, sum(sizes), "float32", "gauss", SEEDS[0])
        add(spec, "mixed", sum(LAYOUTS["mixed"]), "float32", "gauss", SEEDS[1])
        add(spec, "mixed", sum(LAYOUTS["mixed"]), "float32", "zeros", 11)
        add(spec, "mixed", sum(LAYOUTS["mixed"]), "float32", "ties", 11)
        for dtype in ("float64", "float16"):
            add(spec, "model", sum(LAYOUTS["model"]), dtype, "gauss", 3)
        add(spec, "mixed", sum(LAYOUTS["mixed"]), "float32", "gauss", 5, host=False)
    for dtype in ("float64", "float16", "bfloat16"):
        add("identity", None, 5000, dtype, "gauss", 0)
        add("identity", "mixed", sum(LAYOUTS["mixed"]), dtype, "gauss", 0)
    for spec in LGC_SPECS:
        for d in (37, 5000):
            add(spec, None, d, "float32", "gauss", 0)
    return out


def build(case: dict):
    """``(compressor, input)`` of a case (imports the code under test)."""
    from choco.compress import PerTensor, make_compressor

    q = make_compressor(case["spec"])
    if case["sizes"] is not None:
        q = PerTensor(q, LAYOUTS[case["sizes"]])
    return q, make_input(case["kind"], case["d"], DTYPES[case["dtype"]])


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def measure(case: dict) -> dict:
    """What is recorded for a case: the input's, the message's and the decoded sum's hashes
    (or the error class, for a case the code refuses)."""
    from choco.compress import _host

    q, x = build(case)
    saved, threads = _host.HOST_KERNELS, torch.get_num_threads()
    _host.HOST_KERNELS = case["host"]
    # torch's reductions (sign's ||x||_1, the norms) sum in an order that depends on the
    # number of threads, so the record is taken, and compared, with one thread
    torch.set_num_threads(1)
    try:
        try:
            buf = q.encode(x, case["seed"])
        except Exception as exc:  # recorded: the same input must keep failing the same way
            return {"input": sha(x), "error": type(exc).__name__}
        out = start_vector(case["d"], x.dtype)
        q.decode_add_(buf, out, 1 / 3)
        return {"input": sha(x), "nbytes": int(buf.numel()), "bytes": sha(buf),
                "decoded": sha(out)}
    finally:
        _host.HOST_KERNELS = saved
        torch.set_num_threads(threads)


def main() -> int:
    sys.path.append(str(HERE.parent.parent))  # PYTHONPATH, if set, comes first
    record = {case["id"]: measure(case) for case in cases()}
    RECORD.write_text(json.dumps(record, indent=0, sort_keys=True) + "\n")
    print(f"{len(record)} cases written to {RECORD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

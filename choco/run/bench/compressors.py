"""``python -m choco.bench compressors``: encode/decode time of every compressor.

For each spec, on one ``N(0, 1)`` fp32 vector of ``--numel`` entries on ``--device``, the
benchmark interleaves ``--repeat`` rounds of: a plain fp32 copy (``x.clone()``, the
baseline of the ratios; ``y.copy_(x)`` into a preallocated buffer is reported too), an encode
(``encode(x, seed)``, which ends with the bytes on the host) and a decode-and-add into a
preallocated vector (``decode_add_``, what a receiver does per neighbour). It reports the
best round (``--stat min``, robust to other load on the machine) or the median, the bits per
element on the wire (header included) and the ratio of each time to the copy measured in
the same rounds. CUDA timings synchronize the device around each call.

``--per-tensor-model NAME`` (e.g. ``resnet20``) adds a second table: each spec applied per
tensor (:class:`~choco.compress.PerTensor` over the model's parameter sizes) and to the same
entries as one flat vector, encode and decode-and-add (``alpha = 0.5``) of both interleaved
in the same rounds, with the ratios per-tensor/flat (the cost of the segmentation).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from ...compress import is_stateful, make_compressor, per_tensor
from ...compress.stateful import prepare_alone
from ...errors import UsageError
from ..files import check_memory, largest, memory_limit
from ..launch import choose_device
from . import specs

HELP = "time encode/decode of every compressor against a plain fp32 copy"
#: host memory per element: x, its clone, the copy target, the decode target, the encoded
#: buffer and its host copy (measured: 20 bytes with identity)
BYTES_PER_ELEMENT = 32

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--numel", type=int, default=11_000_000, help="vector length d")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:i] or auto")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds per compressor")
    p.add_argument("--stat", choices=("min", "median"), default="min",
                   help="which of the timed rounds is reported")
    p.add_argument("--specs", default=",".join(specs.COMPRESSORS),
                   help="comma-separated compressor specs (default: all families)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")
    p.add_argument("--per-tensor-model", default=None, metavar="NAME",
                   help="also time each spec per tensor over this model's parameters "
                        "(e.g. resnet20) against the same entries as one flat vector")


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def bench_one(spec: str, x: torch.Tensor, repeat: int, stat: str) -> dict:
    """Time ``spec`` on ``x``; return one row of the table (seconds in ms)."""
    q = prepare_alone(make_compressor(spec), x)  # lgc: timed frozen, trained on x first
    timed = _timer(x.device)
    out = torch.zeros_like(x)
    target = torch.zeros_like(x)  # touched once, so copy_ into it pays no page faults
    buf = q.encode(x, 0)  # warm-up (allocator, lazy init)
    q.decode_add_(buf, out)
    copy, copy_into, enc, dec = [], [], [], []
    for r in range(repeat):
        copy.append(timed(lambda: x.clone()))
        copy_into.append(timed(lambda: target.copy_(x)))
        enc.append(timed(partial(q.encode, x, r + 1)))
        buf = q.encode(x, r + 1)
        dec.append(timed(partial(q.decode_add_, buf, out)))
    pick = min if stat == "min" else statistics.median
    c, e, d, ci = pick(copy), pick(enc), pick(dec), pick(copy_into)
    numel = x.numel()
    return {
        "spec": q.spec, "nbytes": int(buf.numel()), "bits_per_element": 8 * buf.numel() / numel,
        "delta": q.delta(numel), "copy_ms": 1e3 * c, "copy_into_ms": 1e3 * ci,
        "encode_ms": 1e3 * e,
        "decode_ms": 1e3 * d, "encode_ratio": e / c, "decode_ratio": d / c,
    }


def bench_per_tensor(spec: str, sizes: list[int], x: torch.Tensor, repeat: int,
                     stat: str) -> dict:
    """Time ``spec`` per tensor (segments ``sizes`` of ``x``) and flat, interleaved.

    Returns the row in ms and the ratios ``per-tensor / flat`` of encode and of
    ``decode_add_`` (``alpha = 0.5``, as into the gossip's ``s``).
    """
    flat = make_compressor(spec)
    per = per_tensor(flat, sizes)
    timed = _timer(x.device)
    out = torch.zeros_like(x)
    bufs = {"flat": flat.encode(x, 0), "per_tensor": per.encode(x, 0)}  # warm-up
    flat.decode_add_(bufs["flat"], out, 0.5)
    per.decode_add_(bufs["per_tensor"], out, 0.5)
    times: dict[str, list[float]] = {key: [] for key in
                                     ("flat_enc", "flat_dec", "per_enc", "per_dec")}
    for r in range(repeat):
        for name, q in (("flat", flat), ("per", per)):
            times[f"{name}_enc"].append(timed(partial(q.encode, x, r + 1)))
            buf = q.encode(x, r + 1)
            times[f"{name}_dec"].append(timed(partial(q.decode_add_, buf, out, 0.5)))
    pick = min if stat == "min" else statistics.median
    t = {key: 1e3 * pick(v) for key, v in times.items()}
    return {
        "spec": flat.spec, "tensors": len(sizes), "numel": x.numel(),
        "per_tensor_nbytes": int(bufs["per_tensor"].numel()),
        "flat_encode_ms": t["flat_enc"], "per_tensor_encode_ms": t["per_enc"],
        "flat_decode_ms": t["flat_dec"], "per_tensor_decode_ms": t["per_dec"],
        "encode_ratio": t["per_enc"] / t["flat_enc"],
        "decode_ratio": t["per_dec"] / t["flat_dec"],
    }


def per_tensor_table(rows: list[dict], model: str, stat: str) -> str:
    """The per-tensor against flat comparison as a Markdown table."""
    first = rows[0]
    lines = [
        f"per tensor: {model}, {first['tensors']} tensors, {first['numel']:,} parameters, "
        f"{stat} of the rounds, decode_add_ with alpha = 0.5",
        "",
        "| spec | per-tensor encode ms | flat encode ms | encode ratio | "
        "per-tensor decode ms | flat decode ms | decode ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['spec']}` | {r['per_tensor_encode_ms']:.3f} | {r['flat_encode_ms']:.3f} | "
            f"{r['encode_ratio']:.2f} | {r['per_tensor_decode_ms']:.3f} | "
            f"{r['flat_decode_ms']:.3f} | {r['decode_ratio']:.2f} |"
        )
    return "\n".join(lines)


def model_sizes(name: str) -> list[int]:
    """The parameter sizes of the model ``name`` (``choco.models.make_model``)."""
    from ...models import make_model

    try:
        model = make_model(name)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"--per-tensor-model: {exc}; e.g. --per-tensor-model resnet20.") from None
    return [p.numel() for p in model.parameters()]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(rows: list[dict], numel: int, device: torch.device, stat: str) -> str:
    """The results as a Markdown table."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    lines = [
        f"d = {numel:,}, device {device} ({where}), {stat} of the rounds, torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads",
        "",
        "| spec | bits/elem | encode ms | decode ms | copy ms | encode/copy | decode/copy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['spec']}` | {r['bits_per_element']:.4g} | {r['encode_ms']:.2f} | "
            f"{r['decode_ms']:.2f} | {r['copy_ms']:.2f} | {r['encode_ratio']:.2f} | "
            f"{r['decode_ratio']:.2f} |"
        )
    into = min(r["copy_into_ms"] for r in rows)
    lines += ["", f"copy = `x.clone()` (a fresh fp32 buffer, like an encode's output); a copy "
              f"into a preallocated, already-touched buffer (`y.copy_(x)`) took {into:.2f} ms."]
    return "\n".join(lines)


def check_numel(numel: int, bytes_per_element: int) -> None:
    """Refuse a ``--numel`` whose memory estimate exceeds the limit, before allocating."""
    limit, _ = memory_limit()
    need = bytes_per_element * numel
    if need > limit:
        most = largest(lambda k: bytes_per_element * k <= limit, high=numel)
        check_memory(need, f"--numel {numel:,}",
                     f"{numel:,} elements × about {bytes_per_element} bytes",
                     f"lower --numel to at most {most:,}")


def run(args: argparse.Namespace) -> int:
    device = choose_device(args.device, indexed=True)
    threads = 1 if args.threads is None else args.threads
    for option, value, example in (("--numel", args.numel, 1_000_000),
                                   ("--repeat", args.repeat, 7), ("--threads", threads, 1)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}; e.g. {option} {example}.")
    names = [q.spec for q in specs.parse_specs(args.specs)]  # every spec validated first
    check_numel(args.numel, BYTES_PER_ELEMENT)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.numel, generator=gen).to(device)
    rows = [bench_one(spec, x, args.repeat, args.stat) for spec in names]
    print(table(rows, args.numel, device, args.stat), flush=True)
    summary = {"numel": args.numel, "device": str(device), "stat": args.stat,
               "threads": torch.get_num_threads(), "rows": rows}
    if args.per_tensor_model is not None:
        sizes = model_sizes(args.per_tensor_model)
        xs = torch.randn(sum(sizes), generator=gen).to(device)
        per_rows = [bench_per_tensor(spec, sizes, xs, args.repeat, args.stat)
                    for spec in names if not is_stateful(make_compressor(spec))]
        if per_rows:
            print("\n" + per_tensor_table(per_rows, args.per_tensor_model, args.stat),
                  flush=True)
        summary["per_tensor"] = {"model": args.per_tensor_model, "rows": per_rows}
    if args.json:
        print(json.dumps(summary))
    return 0

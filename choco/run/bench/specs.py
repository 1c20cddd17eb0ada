"""The compressor specs the benchmarks time by default, and ``--specs`` parsing.

Every benchmark reads its default ``--specs`` from here, so a new family is added to the
benchmarks in one place. The lists differ in size because the benchmarks differ in cost:
an encode is cheap (one spec per family and variant), a gossip round or a training step is
not (one spec per kind of message).
"""

from __future__ import annotations

from ...compress import make_compressor
from ...compress.base import Compressor
from ...errors import UsageError

__all__ = ["COMPRESSORS", "DELTA", "GOSSIP", "TRAIN", "WHATIF", "parse_specs"]

#: ``bench compressors``: one spec per family and wire variant
COMPRESSORS = [
    "identity", "sign", "topk:0.01", "topk:0.001", "topk:0.01:rice", "randk:0.01",
    "randblock:0.01", "natural", "dither:8", "qsgd:16", "topk:0.01+natural",
    "topk:0.01:rice+natural", "randk:0.01+natural", "scaled(qsgd:16)", "sbc:0.01",
]
#: ``bench delta``: every family with the parameters whose δ bound differs
DELTA = [
    "identity", "sign", "topk:0.01", "topk:0.001", "topk:0.01:rice", "randk:0.01",
    "randblock:0.01", "natural", "dither:8", "dither:4", "qsgd:16", "qsgd:4", "qsgd:16:b=0",
    "topk:0.01+natural", "randk:0.01+natural", "randblock:0.01+qsgd:16", "scaled(qsgd:16)",
    "scaled(randk:0.01:raw)", "sbc:0.01", "sbc:0.001", "lgc",
]
#: ``bench whatif``: one spec per kind of message (dense, 1 bit, sparse, sparse + Rice,
#: 9 bits, a random block)
WHATIF = ["identity", "sign", "topk:0.01", "topk:0.01:rice", "natural", "randblock:0.01"]
#: ``bench gossip``: the same and a dense quantizer
GOSSIP = [*WHATIF, "qsgd:16"]
#: ``bench train`` and ``bench scaling``: a dense and a sparse message
TRAIN = ["sign", "topk:0.01"]


def parse_specs(text: str) -> list[Compressor]:
    """The compressors of a comma-separated ``--specs`` (each validated, at least one)."""
    specs = [s.strip() for s in str(text).split(",") if s.strip()]
    if not specs:
        raise UsageError(f"--specs must name at least one compressor spec, got {text!r}; "
                         "e.g. --specs sign,topk:0.01 (or leave it out for the default list).")
    return [make_compressor(s) for s in specs]

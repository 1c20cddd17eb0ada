"""Compression operators for CHOCO-Gossip, parsed from spec strings.

>>> from choco.compress import make_compressor
>>> q = make_compressor("topk:0.01")
>>> q.spec, q.nbytes(1000)
('topk:0.01', 96)

Every compressor encodes to a flat ``uint8`` buffer whose length is the bytes sent; see
:mod:`choco.compress.base` for the interface and the contraction ``δ`` it documents.

Spec grammar (case-insensitive)::

    spec  := term ("+" term)*            composition: A+B, A a sparsifier (compose.py)
    term  := "scaled(" spec ")"          least-squares rescaling (compose.py)
           | name (":" arg)*             e.g. topk:0.01, qsgd:16:b=128, natural:raw

=================  ==========================================  ===========================
spec               operator                                    δ (CHOCO form)
=================  ==========================================  ===========================
``identity``       ``x``                                       1
``sign``           ``(||x||_1/d) sign(x)``                     ``>= 1/d`` (2/π on N(0,1))
``topk:R``         ``k = max(1, ceil(R d))`` largest ``|x_i|``  ``>= k/d``
``randk:R``        ``k`` uniform positions, unscaled            ``k/d``
``randblock:R``    ``k`` contiguous entries, wrapped            ``k/d``
``natural``        ``(8/9) C_nat``                              ``8/9``
``dither:S``       natural dithering / ``(1 + ω)``              ``1/(1 + ω)``
``qsgd:S``         QSGD / ``(1 + ω)``                           ``1/(1 + ω)``
``A+B``            ``B`` on the values ``A`` keeps              ``δ_A δ_B``
``scaled(SPEC)``   ``α* Q(x)``, ``α* = <Q x, x>/||Q x||²``      ``>= δ_Q``
``sbc:R``          signed mean on ``k`` entries of one sign    ``>= 1/(4d)``
``lgc``            learned code of the top-k values (lgc.py)   ``>= min(1 − floor, k'/d)``
=================  ==========================================  ===========================

Options: ``:raw`` (randk, randblock, natural, dither, qsgd) sends the unbiased operator
``C`` unscaled, for DCD/ECD-PSGD; ``make_compressor(spec, unbiased=True)`` does the same.
``topk:R:rice`` sends Rice-coded position gaps (about 8.5 bits per position at 1%) instead
of int32 positions.
``b=N`` sets the bucket size of dither/qsgd (default 512, ``b=0``: whole vector).
Per-tensor compression of a flat buffer (the CHOCO paper's default, one ``k``, scale or
norm per layer) is :class:`PerTensor`; a bare compressor treats its input as one vector.

New families are added with :func:`register` or, from another package, through the
entry-point group ``choco.compressors`` (:mod:`choco.compress.registry`); a codec with
per-node coding state declares it through :mod:`choco.compress.stateful`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import CompressionError, Compressor, decode, is_raw
from .compose import Composed, Scaled
from .identity import Identity
from .lgc import LGC
from .natural import Natural
from .quantize import DEFAULT_BUCKET, QSGD, Dither
from .registry import (
    EXAMPLES,
    GROUP,
    REGISTRY,
    Factory,
    available,
    make_compressor,
    register,
    split_args,
)
from .sbc import SBC
from .segmented import PerTensor
from .sign import Sign
from .sparse import RandBlock, RandK, Sparsifier
from .stateful import CodingState, Stateful, is_stateful
from .topk import TopK, TopKRice


def _bad(name: str, arg: str | None, need: str, example: str) -> CompressionError:
    got = f"{name}:{arg}" if arg is not None else name
    return CompressionError(f"{name} needs {need}, got {got!r}; write e.g. {example}")


def _no_arg(cls: type[Compressor], name: str) -> Factory:
    def make(arg: str | None) -> Compressor:
        if arg is not None:
            raise CompressionError(f"{name} takes no argument, got {name}:{arg}; write {name}")
        return cls()

    return make


def _ratio(cls: type[Sparsifier], name: str) -> Factory:
    def make(arg: str | None) -> Compressor:
        positional, options, raw = split_args(arg)
        need = "a ratio R in (0, 1] as " + name + ":R" + ("[:raw]" if cls.random_support
                                                         else "[:rice]")
        allowed = set() if cls.random_support else {"rice"}
        if len(positional) != 1 or set(options) - allowed or (raw and not cls.random_support):
            raise _bad(name, arg, need, f"{name}:0.01")
        try:
            ratio = float(positional[0])
        except ValueError:
            raise _bad(name, arg, need, f"{name}:0.01") from None
        if not 0.0 < ratio <= 1.0:
            raise _bad(name, arg, need, f"{name}:0.01")
        if "rice" in options:
            return TopKRice(ratio)
        return cls(ratio, raw=True) if raw else cls(ratio)

    return make


def _natural(arg: str | None) -> Compressor:
    positional, options, raw = split_args(arg)
    if positional or options:
        raise _bad("natural", arg, "no argument (or :raw)", "natural or natural:raw")
    return Natural(raw=raw)


def _sbc(arg: str | None) -> Compressor:
    positional, options, raw = split_args(arg)
    need = "a ratio R in (0, 1] as sbc:R"
    if len(positional) != 1 or options or raw:
        raise _bad("sbc", arg, need, "sbc:0.01")
    try:
        ratio = float(positional[0])
    except ValueError:
        raise _bad("sbc", arg, need, "sbc:0.01") from None
    if not 0.0 < ratio <= 1.0:
        raise _bad("sbc", arg, need, "sbc:0.01")
    return SBC(ratio)


def _lgc(arg: str | None) -> Compressor:
    positional, options, raw = split_args(arg)
    need = ("options warmup=ROUNDS, latent=F (a power of two), ratio=R, floor=E as "
            "lgc[:warmup=N][:latent=F][:ratio=R][:floor=E]")
    example = "lgc or lgc:warmup=100:latent=4:ratio=0.01"
    if positional or raw or set(options) - {"warmup", "latent", "ratio", "floor"}:
        raise _bad("lgc", arg, need, example)
    try:
        kwargs: dict = {key: (int(value) if key in ("warmup", "latent") else float(value))
                        for key, value in options.items()}
    except ValueError:
        raise _bad("lgc", arg, need, example) from None
    return LGC(**kwargs)


def _levels(cls: type[QSGD] | type[Dither], name: str, example: str) -> Factory:
    def make(arg: str | None) -> Compressor:
        positional, options, raw = split_args(arg)
        need = f"a number of levels S >= 1 as {name}:S[:b=BUCKET][:raw]"
        if len(positional) != 1 or set(options) - {"b"}:
            raise _bad(name, arg, need, example)
        try:
            levels = int(positional[0])
            bucket = int(options.get("b", DEFAULT_BUCKET))
        except ValueError:
            raise _bad(name, arg, need, example) from None
        return cls(levels, bucket, raw=raw)

    return make


for _name, _factory, _example in [
    ("identity", _no_arg(Identity, "identity"), "identity"),
    ("sign", _no_arg(Sign, "sign"), "sign"),
    ("topk", _ratio(TopK, "topk"), "topk:0.01"),
    ("randk", _ratio(RandK, "randk"), "randk:0.01"),
    ("randblock", _ratio(RandBlock, "randblock"), "randblock:0.01"),
    ("natural", _natural, "natural"),
    ("dither", _levels(Dither, "dither", "dither:8"), "dither:8"),
    ("qsgd", _levels(QSGD, "qsgd", "qsgd:16"), "qsgd:16"),
    ("sbc", _sbc, "sbc:0.01"),
    ("lgc", _lgc, "lgc"),
]:
    register(_name, _factory, _example)
del _name, _factory, _example


def per_tensor(q: Compressor, sizes: Sequence[int]) -> Compressor:
    """``q`` applied tensor by tensor over ``sizes`` (:class:`PerTensor`), except for a
    codec with per-node coding state (``lgc``: one code per whole vector), returned as it
    is."""
    return q if is_stateful(q) else PerTensor(q, sizes)


__all__ = [
    "EXAMPLES",
    "GROUP",
    "LGC",
    "QSGD",
    "REGISTRY",
    "SBC",
    "CodingState",
    "Composed",
    "CompressionError",
    "Compressor",
    "Dither",
    "Factory",
    "Identity",
    "Natural",
    "PerTensor",
    "RandBlock",
    "RandK",
    "Scaled",
    "Sign",
    "Sparsifier",
    "Stateful",
    "TopK",
    "TopKRice",
    "available",
    "decode",
    "is_raw",
    "is_stateful",
    "make_compressor",
    "per_tensor",
    "register",
]

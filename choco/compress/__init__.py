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
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from .base import CompressionError, Compressor
from .compose import Composed, Scaled
from .identity import Identity
from .lgc import LGC
from .natural import Natural
from .quantize import DEFAULT_BUCKET, QSGD, Dither
from .sbc import SBC
from .segmented import PerTensor
from .sign import Sign
from .sparse import RandBlock, RandK, Sparsifier
from .topk import TopK, TopKRice

Factory = Callable[[str | None], Compressor]


def _split_args(name: str, arg: str | None) -> tuple[list[str], dict[str, str], bool]:
    """``"0.01:raw"`` → positional ``["0.01"]``, options ``{}``, raw ``True``; a bare word
    option such as ``rice`` becomes ``options["rice"] = ""``."""
    positional: list[str] = []
    options: dict[str, str] = {}
    raw = False
    for part in (arg.split(":") if arg else []):
        part = part.strip()
        if part == "raw":
            raw = True
        elif part == "rice":
            options[part] = ""
        elif "=" in part:
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
        elif part:
            positional.append(part)
    return positional, options, raw


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
        positional, options, raw = _split_args(name, arg)
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
    positional, options, raw = _split_args("natural", arg)
    if positional or options:
        raise _bad("natural", arg, "no argument (or :raw)", "natural or natural:raw")
    return Natural(raw=raw)


def _sbc(arg: str | None) -> Compressor:
    positional, options, raw = _split_args("sbc", arg)
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
    positional, options, raw = _split_args("lgc", arg)
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
        positional, options, raw = _split_args(name, arg)
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


#: name -> factory taking the text after ``name:`` (or None). Extended by other modules.
REGISTRY: dict[str, Factory] = {
    "identity": _no_arg(Identity, "identity"),
    "sign": _no_arg(Sign, "sign"),
    "topk": _ratio(TopK, "topk"),
    "randk": _ratio(RandK, "randk"),
    "randblock": _ratio(RandBlock, "randblock"),
    "natural": _natural,
    "dither": _levels(Dither, "dither", "dither:8"),
    "qsgd": _levels(QSGD, "qsgd", "qsgd:16"),
    "sbc": _sbc,
    "lgc": _lgc,
}

#: example specs shown when a name is unknown
EXAMPLES: dict[str, str] = {
    "identity": "identity", "sign": "sign", "topk": "topk:0.01", "randk": "randk:0.01",
    "randblock": "randblock:0.01", "natural": "natural", "dither": "dither:8",
    "qsgd": "qsgd:16", "sbc": "sbc:0.01", "lgc": "lgc",
}
#: combinator forms, listed after the families
FORMS = ["topk:0.01+natural", "scaled(randk:0.1:raw)"]


def per_tensor(q: Compressor, sizes: Sequence[int]) -> Compressor:
    """``q`` applied tensor by tensor over ``sizes`` (:class:`PerTensor`), except for a
    compressor that codes one whole vector (``lgc``), which is returned as it is."""
    return q if isinstance(q, LGC) else PerTensor(q, sizes)


def register(name: str, factory: Factory, example: str) -> None:
    """Add a compressor family to :func:`make_compressor` under ``name``."""
    REGISTRY[name] = factory
    EXAMPLES[name] = example


def available() -> list[str]:
    """Example spec strings of every registered compressor and combinator."""
    return [EXAMPLES[name] for name in sorted(REGISTRY)] + FORMS


def _split_top(text: str, spec: str) -> list[str]:
    """Split ``text`` on ``+`` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            break
        if ch == "+" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise CompressionError(
            f"a compressor spec must have balanced parentheses, got {spec!r}; write e.g. "
            "scaled(topk:0.01)"
        )
    return [*parts, text[start:]]


def _alone(q: Compressor, spec: str) -> Compressor:
    if isinstance(q, LGC):
        raise CompressionError(
            f"lgc is used alone (it selects top-k values and rescales them itself), got "
            f"{spec!r}; write e.g. lgc:ratio=0.01"
        )
    return q


def _parse(text: str, spec: str) -> Compressor:
    parts = [p.strip() for p in _split_top(text, spec)]
    if any(not p for p in parts):
        raise CompressionError(
            f"every term of a composition A+B must be a compressor spec, got an empty term in "
            f"{spec!r}; write e.g. topk:0.01+natural"
        )
    if len(parts) > 1:
        return Composed(_alone(_parse(parts[0], spec), spec),
                        _alone(_parse("+".join(parts[1:]), spec), spec))
    if text.startswith("scaled(") and text.endswith(")"):
        return Scaled(_alone(_parse(text[len("scaled(") : -1].strip(), spec), spec))
    name, sep, arg = text.partition(":")
    factory = REGISTRY.get(name.strip())
    if factory is None:
        part = name.strip()
        where = "" if part == spec.strip().lower() else f" in {spec!r}"
        close = difflib.get_close_matches(part, list(REGISTRY), n=1)
        hint = f"did you mean {close[0]}{sep}{arg.strip()}? " if close else ""
        raise CompressionError(
            f"a compressor spec must name known compressors, got the unknown compressor "
            f"{part!r}{where}; {hint}valid specs are: {', '.join(available())}"
        )
    return factory(arg.strip() if sep else None)


def make_compressor(spec: str, unbiased: bool = False) -> Compressor:
    """Build a compressor from a spec string such as ``sign`` or ``topk:0.01+natural``.

    Parameters
    ----------
    spec
        See the module docstring for the grammar and the families.
    unbiased
        Return the unscaled unbiased form ``C`` (same as the ``:raw`` suffix on every
        part), for the DCD/ECD-PSGD baselines; raises for biased compressors.

    Raises
    ------
    CompressionError
        For an unknown name (the message lists the valid ones) or a bad argument.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise CompressionError(
            f"a compressor spec string is required, got {spec!r}; valid specs are: "
            f"{', '.join(available())}"
        )
    compressor = _parse(spec.strip().lower(), spec)
    return compressor.raw() if unbiased else compressor


__all__ = [
    "LGC",
    "QSGD",
    "REGISTRY",
    "SBC",
    "Composed",
    "CompressionError",
    "Compressor",
    "Dither",
    "Identity",
    "Natural",
    "PerTensor",
    "RandBlock",
    "RandK",
    "Scaled",
    "Sign",
    "Sparsifier",
    "TopK",
    "TopKRice",
    "available",
    "make_compressor",
    "per_tensor",
    "register",
]

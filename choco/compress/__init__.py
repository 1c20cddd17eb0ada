"""Compression operators for CHOCO-Gossip, parsed from spec strings.

>>> from choco.compress import make_compressor
>>> q = make_compressor("topk:0.01")
>>> q.spec, q.nbytes(1000)
('topk:0.01', 96)

Every compressor encodes to a flat ``uint8`` buffer whose length is the bytes sent; see
:mod:`choco.compress.base` for the interface and the contraction ``δ`` it documents.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import CompressionError, Compressor
from .identity import Identity
from .segmented import PerTensor
from .sign import Sign
from .topk import TopK

Factory = Callable[[str | None], Compressor]


def _no_arg(cls: type[Compressor], name: str) -> Factory:
    def make(arg: str | None) -> Compressor:
        if arg is not None:
            raise CompressionError(f"{name} takes no argument, got {name}:{arg}; write {name}")
        return cls()

    return make


def _ratio(cls: Callable[[float], Compressor], name: str) -> Factory:
    def make(arg: str | None) -> Compressor:
        try:
            ratio = float(arg) if arg is not None else float("nan")
        except ValueError:
            ratio = float("nan")
        if not 0.0 < ratio <= 1.0:
            raise CompressionError(
                f"{name} needs a ratio in (0, 1] as {name}:R (e.g. {name}:0.01), got "
                f"{name}:{arg}" if arg is not None else f"{name} needs a ratio: {name}:0.01"
            )
        return cls(ratio)

    return make


#: name -> factory taking the text after ``name:`` (or None). Extended by other modules.
REGISTRY: dict[str, Factory] = {
    "identity": _no_arg(Identity, "identity"),
    "sign": _no_arg(Sign, "sign"),
    "topk": _ratio(TopK, "topk"),
}

#: example specs shown when a name is unknown
EXAMPLES: dict[str, str] = {"identity": "identity", "sign": "sign", "topk": "topk:0.01"}


def register(name: str, factory: Factory, example: str) -> None:
    """Add a compressor family to :func:`make_compressor` under ``name``."""
    REGISTRY[name] = factory
    EXAMPLES[name] = example


def available() -> list[str]:
    """Example spec strings of every registered compressor."""
    return [EXAMPLES[name] for name in sorted(REGISTRY)]


def make_compressor(spec: str) -> Compressor:
    """Build a compressor from a spec string such as ``sign`` or ``topk:0.01``.

    Raises
    ------
    CompressionError
        For an unknown name (the message lists the valid ones) or a bad argument.
    """
    text = spec.strip()
    name, _, arg = text.partition(":")
    factory = REGISTRY.get(name.strip().lower())
    if factory is None:
        raise CompressionError(
            f"unknown compressor {spec!r}; valid specs are: {', '.join(available())}"
        )
    return factory(arg.strip() if arg else None)


__all__ = [
    "REGISTRY",
    "CompressionError",
    "Compressor",
    "Identity",
    "PerTensor",
    "Sign",
    "TopK",
    "available",
    "make_compressor",
    "register",
]

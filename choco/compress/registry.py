"""The compressor registry: spec names to factories, built-in and from plugins.

A spec such as ``topk:0.01`` names a family (``topk``) and passes the text after the first
``:`` (``"0.01"``, or ``None`` without one) to that family's *factory*, which returns a
:class:`~choco.compress.base.Compressor`. :func:`make_compressor` parses the whole grammar
(compositions ``A+B``, ``scaled(...)``) on top of that table.

Adding a compressor is one module and one entry:

* in the same program, :func:`register` (``register("fp16", make_fp16, "fp16")``);
* from another installed package, an entry point in the group ``choco.compressors`` whose
  name is the spec name and whose object is the factory (``pyproject.toml``:
  ``[project.entry-points."choco.compressors"] fp16 = "mypkg.codec:make_fp16"``). Plugins
  are found through :mod:`importlib.metadata` and imported only when their name is used
  (listing the names reads the metadata only); one that fails to import, or whose factory
  does not return a compressor, raises a :class:`CompressionError` naming it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from .base import CompressionError, Compressor
from .compose import Composed, Scaled
from .stateful import is_stateful

__all__ = [
    "EXAMPLES",
    "FORMS",
    "GROUP",
    "REGISTRY",
    "Factory",
    "available",
    "make_compressor",
    "register",
    "split_args",
]

log = logging.getLogger(__name__)

#: a family's factory: the text after ``name:`` (or None) to a compressor
Factory = Callable[[str | None], Compressor]
#: the entry-point group in which other packages declare compressors
GROUP = "choco.compressors"

#: name -> factory (built-ins are registered by :mod:`choco.compress`)
REGISTRY: dict[str, Factory] = {}
#: name -> example spec shown when a name is unknown
EXAMPLES: dict[str, str] = {}
#: combinator forms, listed after the families
FORMS = ["topk:0.01+natural", "scaled(randk:0.1:raw)"]


def register(name: str, factory: Factory, example: str | None = None) -> None:
    """Make ``name`` (and ``name:ARGS``) a spec of :func:`make_compressor`.

    Parameters
    ----------
    name
        The family's spec name: lower case letters, digits, ``_`` or ``-``.
    factory
        Called with the text after ``name:`` (``None`` without one); returns the
        compressor, or raises :class:`CompressionError` for an argument it does not take.
    example
        A valid spec shown in error messages and help (default: ``name``).
    """
    key = name.strip().lower()
    if not key or not all(c.isalnum() or c in "_-" for c in key):
        raise CompressionError(f"a compressor name is letters, digits, '_' or '-', got "
                               f"{name!r}; e.g. register('fp16', make_fp16)")
    if not callable(factory):
        raise CompressionError(f"compressor {key!r}: the factory must be callable (text after "
                               f"'{key}:' or None -> Compressor), got {factory!r}")
    REGISTRY[key] = factory
    EXAMPLES[key] = example or key


def _plugins() -> dict[str, EntryPoint]:
    """The entry points of :data:`GROUP` not registered yet, by lower-case name."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        key = ep.name.strip().lower()
        if key not in REGISTRY:
            found.setdefault(key, ep)
    return found


def _where(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    by = f" of the distribution {dist.name!r}" if dist is not None else ""
    return f"compressor plugin {ep.name!r} ({ep.value!r}, entry point group {GROUP!r}{by})"


def _load(ep: EntryPoint) -> Factory:
    """Import one plugin and register its factory, checking what it returns."""
    where = _where(ep)
    try:
        obj = ep.load()
    except Exception as exc:
        raise CompressionError(f"the {where} failed to load: {type(exc).__name__}: {exc}; "
                               "fix or uninstall the package that declares it") from exc
    if not callable(obj):
        raise CompressionError(f"the {where} must name a factory (text after the name or None "
                               f"-> Compressor), got {obj!r}; fix the entry point")

    def factory(arg: str | None) -> Compressor:
        try:
            q = obj(arg)
        except CompressionError:
            raise
        except Exception as exc:
            raise CompressionError(f"the {where} failed to build a compressor from argument "
                                   f"{arg!r}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(q, Compressor):
            raise CompressionError(f"the {where} must return a choco.compress.Compressor, got "
                                   f"{q!r}; fix its factory")
        return q

    register(ep.name, factory)
    log.debug("loaded the %s", where)
    return factory


def _factory(name: str) -> Factory | None:
    """The factory of ``name``: registered, or a plugin imported now; None if unknown."""
    factory = REGISTRY.get(name)
    if factory is None:
        ep = _plugins().get(name)
        factory = _load(ep) if ep is not None else None
    return factory


def available() -> list[str]:
    """Example spec strings of every compressor (registered and plugin) and combinator."""
    names = sorted({*REGISTRY, *_plugins()})
    return [EXAMPLES.get(name, name) for name in names] + FORMS


def split_args(arg: str | None) -> tuple[list[str], dict[str, str], bool]:
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
    """``q`` if it may be a part of a composition or ``scaled(...)``: a codec with per-node
    coding state (lgc) may not, since a combinator does not carry that state."""
    if is_stateful(q):
        name = q.spec.split(":")[0]
        raise CompressionError(
            f"{name} is used alone (it keeps per-node coding state, which compositions and "
            f"scaled(...) do not carry; lgc also selects and rescales its values itself), got "
            f"{spec!r}; write e.g. {EXAMPLES.get(name, name)}"
        )
    return q


def _unknown(part: str, spec: str) -> CompressionError:
    names = sorted({*REGISTRY, *_plugins()})
    close = difflib.get_close_matches(part, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = "" if part == spec.strip().lower() else f" in {spec!r}"
    return CompressionError(
        f"a compressor spec must name known compressors, got the unknown compressor "
        f"{part!r}{where}{hint}; valid specs are: {', '.join(available())}"
    )


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
    factory = _factory(name.strip())
    if factory is None:
        raise _unknown(name.strip(), spec)
    return factory(arg.strip() if sep else None)


def make_compressor(spec: str, unbiased: bool = False) -> Compressor:
    """Build a compressor from a spec string such as ``sign`` or ``topk:0.01+natural``.

    Parameters
    ----------
    spec
        See :mod:`choco.compress` for the grammar and the families.
    unbiased
        Return the unscaled unbiased form ``C`` (same as the ``:raw`` suffix on every
        part), for the DCD/ECD-PSGD baselines; raises for biased compressors.

    Raises
    ------
    CompressionError
        For an unknown name (the message lists the valid ones and suggests the closest),
        a bad argument, or a plugin that fails to load.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise CompressionError(
            f"a compressor spec string is required, got {spec!r}; valid specs are: "
            f"{', '.join(available())}"
        )
    compressor = _parse(spec.strip().lower(), spec)
    return compressor.raw() if unbiased else compressor

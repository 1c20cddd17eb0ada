"""Do all ranks run the same configuration from the same initial parameters? One call checks.

A rank started with other options than its peers (another topology, compressor or model)
would post exchanges its neighbours never enter, or decode their messages as garbage; a rank
whose model was initialised differently silently breaks the "same starting point" every
decentralized method assumes. :func:`check_agreement` finds both at start-up:

* every rank digests its configuration (a hash of its canonical JSON, and the JSON itself
  when it is small, :data:`INLINE_CONFIG_BYTES`) and its tensors (a hash of each tensor's
  dtype, shape and bytes);
* **one** collective (``comm.allgather_object`` of the digests) tells every rank whether
  all agree; only when they do not, and only if the details are needed (a large
  configuration, which tensor differs), a second collective gathers them. Both decisions
  depend only on gathered data, so every rank takes the same path;
* any difference raises :class:`~choco.errors.AgreementError` on **every** rank (nothing is
  left waiting), naming the disagreeing ranks and the first differing configuration field
  with its value on each side, or the ranks whose initial parameters differ and the first
  differing tensor.

It needs only the blocking collectives of a :class:`~choco.comm.Communicator`: it works on a
:class:`~choco.comm.LocalNetwork` (inside :meth:`~choco.comm.LocalNetwork.run`) and on an
MPI communicator, including one without neighbours, ``MPICommunicator([], MPI.COMM_WORLD)``,
which a program can build at start-up before it knows the topology.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import AgreementError
from .base import Communicator, format_ranks

__all__ = ["INLINE_CONFIG_BYTES", "AgreementError", "check_agreement", "config_digest",
           "tensors_digest"]

#: a configuration whose JSON is at most this long travels with the first digest, so a
#: difference is explained without a second collective
INLINE_CONFIG_BYTES = 4096

_MISSING = object()  # a field one rank has and another does not


def check_agreement(
    comm: Communicator,
    *,
    config: Mapping[str, object] | None = None,
    tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor] | None = None,
    what: str = "run",
) -> None:
    """Raise :class:`AgreementError` on every rank unless all ranks pass equal arguments.

    Collective: every rank of ``comm`` must call it (with ``config`` and ``tensors`` given
    or omitted alike). Costs one ``allgather_object`` of a few hundred bytes when the ranks
    agree; a second one only to explain a difference.

    Parameters
    ----------
    comm
        Any communicator; only its blocking collectives are used, so
        ``MPICommunicator([], MPI.COMM_WORLD)`` (no neighbours) is enough.
    config
        The options every rank must share, as a mapping of JSON-like values (strings,
        numbers, booleans, ``None``, lists, tuples, nested mappings; also paths, enums,
        dataclasses, numpy scalars and arrays, torch dtypes and devices). Compared by its
        canonical JSON (key order does not matter); nested fields are named ``a.b``.
    tensors
        Tensors every rank must hold bit for bit (typically ``model.parameters()`` right
        after initialisation, or a ``state_dict()``, whose keys then name the tensors in
        the message). Compared by dtype, shape and bytes.
    what
        What the ranks run, for the message: ``"run"`` gives "ranks disagree on the run's
        configuration: ...".

    Raises
    ------
    AgreementError
        On every rank, if any rank's configuration or tensors differ from another's, or a
        rank could not digest its arguments.
    """
    mine = _Digest.build(config, tensors)
    first = comm.allgather_object(mine.summary())
    errors = [(r, d["error"]) for r, d in enumerate(first) if d["error"] is not None]
    if errors:
        rank, err = errors[0]
        raise AgreementError(
            f"the agreement check of the {what} failed: rank {rank} could not digest its "
            f"arguments ({err}); pass a configuration of plain values (strings, numbers, "
            "lists, mappings) and tensors."
        )
    config_differs = len({d["config"] for d in first}) > 1
    tensors_differ = len({(d["tensors"], d["count"]) for d in first}) > 1
    if not (config_differs or tensors_differ):
        return
    need_json = config_differs and any(
        d["config"] is not None and d["config_json"] is None for d in first)
    details: list[dict] = [{} for _ in first]
    if need_json or tensors_differ:
        details = comm.allgather_object({
            "config_json": mine.config_json if need_json else None,
            "tensors": mine.tensor_info if tensors_differ else None,
        })
    parts = []
    if config_differs:
        jsons = [d.get("config_json") or f["config_json"] for d, f in zip(details, first,
                                                                          strict=True)]
        parts.append(_config_message(first, jsons, what))
    if tensors_differ:
        infos = [d.get("tensors") for d in details]
        parts.append(_tensor_message(first, infos, what, also=config_differs))
    raise AgreementError(" ".join(parts))


# ---------------------------------------------------------------------------------- digests
def config_digest(config: Mapping[str, object]) -> str:
    """Hex digest of ``config``'s canonical JSON (sorted keys): equal iff the values are."""
    return _hash(_canonical(_plain(config, "config")).encode())


def tensors_digest(tensors: Iterable[torch.Tensor]) -> str:
    """Hex digest of the tensors' dtypes, shapes and bytes, in order."""
    return _hash("".join(_tensor_info(t, None)[3] for t in tensors).encode())


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON-able data (mappings keep their order; keys become strings)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # JSON has no NaN/Inf
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _plain(value.value, where)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, where) for v in value), key=_canonical)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return _plain(value.tolist(), where)
    text = str(value)
    if " at 0x" in text:  # the default repr differs between processes
        raise TypeError(f"{where} holds a {type(value).__name__!r} value without a stable "
                        "text form")
    return text


#: ``(name, dtype, shape, digest)`` of one tensor
TensorInfo = tuple[str | None, str, tuple[int, ...], str]


def _tensor_info(t: torch.Tensor, name: str | None) -> TensorInfo:
    """``(name, dtype, shape, digest)`` of one tensor; the digest covers all three of
    dtype, shape and bytes."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensors must be torch tensors, got a {type(t).__name__}")
    flat = t.detach().reshape(-1).contiguous().cpu()
    dtype, shape = str(t.dtype).removeprefix("torch."), tuple(int(s) for s in t.shape)
    h = hashlib.blake2b(f"{dtype}{shape}".encode(), digest_size=16)
    h.update(flat.view(torch.uint8).numpy().data)  # hashed in place, no copy of the bytes
    return name, dtype, shape, h.hexdigest()


@dataclasses.dataclass
class _Digest:
    """This rank's digests; an ``error`` instead if its arguments could not be digested."""

    config: str | None = None
    config_json: str | None = None
    tensor_info: list[TensorInfo] | None = None
    error: str | None = None

    @classmethod
    def build(cls, config, tensors) -> _Digest:
        out = cls()
        try:  # never raise alone: the other ranks would wait in the collective
            if config is not None:
                plain = _plain(config, "config")
                out.config = _hash(_canonical(plain).encode())
                out.config_json = json.dumps(plain, ensure_ascii=False)
            if tensors is not None:
                items = (tensors.items() if isinstance(tensors, Mapping)
                         else ((None, t) for t in tensors))
                out.tensor_info = [_tensor_info(t, name) for name, t in items]
        except Exception as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        return out

    def summary(self) -> dict:
        """What the first collective carries: a few hundred bytes."""
        info = self.tensor_info
        small = self.config_json is not None and len(self.config_json) <= INLINE_CONFIG_BYTES
        return {
            "error": self.error,
            "config": self.config,
            "config_json": self.config_json if small else None,
            "tensors": None if info is None else _hash("".join(i[3] for i in info).encode()),
            "count": None if info is None else len(info),
        }


# ---------------------------------------------------------------------------------- messages
def _possessive(what: str) -> str:
    return f"{what}'" if what.endswith("s") else f"{what}'s"


def _groups(keys: list) -> list[tuple[object, list[int]]]:
    """``[(key, ranks)]`` grouping equal keys, in order of each group's lowest rank."""
    out: dict = {}
    for rank, key in enumerate(keys):
        out.setdefault(key, []).append(rank)
    return list(out.items())


def _show(value: object) -> str:
    if value is _MISSING:
        return "not set"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    """Nested mappings as ``{"a.b": leaf}``, in order; lists and empty mappings are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value}


def _config_message(first: list[dict], jsons: list[str | None], what: str) -> str:
    head = f"ranks disagree on the {_possessive(what)} configuration"
    given = [r for r, (d, j) in enumerate(zip(first, jsons, strict=True))
             if d["config"] is not None and j is not None]
    if len(given) != len(first):
        missing = [r for r in range(len(first)) if r not in given]
        return (f"{head}: a configuration is passed on {format_ranks(given)} but not on "
                f"{format_ranks(missing)}; call check_agreement with the same arguments on "
                "every rank.")
    flats = [_flatten(json.loads(j)) for j in jsons if j is not None]  # one per rank
    fields: dict[str, None] = {}
    for flat in flats:
        fields.update(dict.fromkeys(flat))
    differing = []
    for field in fields:
        values = [flat.get(field, _MISSING) for flat in flats]
        # canonical JSON never holds a raw NUL, so the marker cannot equal a value
        keyed = ["\0missing" if v is _MISSING else _canonical(v) for v in values]
        if len(set(keyed)) > 1:
            differing.append((field, values, keyed))
    if not differing:  # equal leaves with different digests: should not happen
        return f"{head}: their digests differ; start every rank with the same options."
    field, values, keyed = differing[0]
    field, values, keyed = _narrow(field, values, keyed)
    groups = _groups(keyed)
    shown = [f"{_show(values[ranks[0]])} on {format_ranks(ranks)}" for _, ranks in groups]
    text = f"field {field!r} is {shown[0]} but " + ", ".join(shown[1:])
    if len(differing) > 1:
        others = [repr(f) for f, _, _ in differing[1:4]]
        more = " and more" if len(differing) > 4 else ""
        text += f" (also differing: {', '.join(others)}{more})"
    return f"{head}: {text}; start every rank with the same options."


def _narrow(field: str, values: list, keyed: list[str]) -> tuple[str, list, list[str]]:
    """Into lists of one length (``field[i]``) and mappings (``field.k``), down to the first
    element that differs, so a long value is not shown whole."""
    while values and all(isinstance(v, list) for v in values) and len(
            {len(v) for v in values}) == 1:
        i = next((i for i in range(len(values[0]))
                  if len({_canonical(v[i]) for v in values}) > 1), None)
        if i is None:
            break
        field, values = f"{field}[{i}]", [v[i] for v in values]
        if all(isinstance(v, dict) and v for v in values):
            sub = [_flatten(v) for v in values]
            key = next((k for k in dict.fromkeys(k for f in sub for k in f)
                        if len({_canonical(f[k]) if k in f else "\0" for f in sub}) > 1), None)
            if key is not None:
                field, values = f"{field}.{key}", [f.get(key, _MISSING) for f in sub]
        keyed = ["\0missing" if v is _MISSING else _canonical(v) for v in values]
    return field, values, keyed


def _describe(info: TensorInfo | None) -> str:
    if info is None:
        return "no tensor"
    name, dtype, shape, _ = info
    return (f"{name!r}, " if name else "") + f"{dtype} of shape {tuple(shape)}"


def _tensor_message(first: list[dict], infos: list[list[TensorInfo] | None], what: str,
                    also: bool) -> str:
    head = (f"The {_possessive(what)} initial parameters differ too" if also
            else f"ranks disagree on the {_possessive(what)} initial parameters")
    given = [r for r, i in enumerate(infos) if i is not None]
    if len(given) != len(infos):
        missing = [r for r in range(len(infos)) if r not in given]
        return (f"{head}: tensors are passed on {format_ranks(given)} but not on "
                f"{format_ranks(missing)}; call check_agreement with the same arguments on "
                "every rank.")
    lists = [i for i in infos if i is not None]  # one per rank: every rank passed tensors
    groups = _groups([(d["tensors"], d["count"]) for d in first])
    ref_ranks = groups[0][1]
    ref = lists[ref_ranks[0]]
    others = [r for _, ranks in groups[1:] for r in ranks]
    # the first tensor index at which any group differs from the reference group
    index: int | None = None
    group: list[int] = []
    for _, ranks in groups[1:]:
        cand = lists[ranks[0]]
        for i in range(max(len(ref), len(cand))):
            a = ref[i] if i < len(ref) else None
            b = cand[i] if i < len(cand) else None
            if a is None or b is None or tuple(a[1:]) != tuple(b[1:]):
                if index is None or i < index:
                    index, group = i, ranks
                break
    text = (f"{head}: those of {format_ranks(others)} differ from those of "
            f"{format_ranks(ref_ranks)}")
    fix = ("seed every rank the same before building the model (torch.manual_seed) or "
           "broadcast rank 0's parameters")
    if index is None:  # cannot happen: the digests differ
        return f"{text}; {fix}."
    a = ref[index] if index < len(ref) else None
    cand = lists[group[0]]
    b = cand[index] if index < len(cand) else None
    counts = {len(lists[ranks[0]]) for _, ranks in groups}
    if a is not None and b is not None and a[1:3] == b[1:3]:
        detail = f"first at tensor {index} ({_describe(a)}): different values"
    else:
        detail = (f"first at tensor {index}: {_describe(a)} on {format_ranks(ref_ranks)} but "
                  f"{_describe(b)} on {format_ranks(group)}")
        fix = "build the same model on every rank"
    if len(counts) > 1:
        sizes = ", ".join(f"{len(lists[ranks[0]])} on {format_ranks(ranks)}"
                          for _, ranks in groups)
        detail += f" (tensor counts: {sizes})"
    return f"{text}, {detail}; {fix}."

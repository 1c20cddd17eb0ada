"""``--network SPEC``: the simulated network of an in-process run, parsed and checked.

SPEC is comma-separated ``key=value`` (docs/simulation.md)::

    bandwidth=1g,latency=50us,compute=30ms,slow=3:4;5:2,jitter=0.1,seed=1,file=net.toml

========== ==================================================================== ==========
key        meaning                                                              default
========== ==================================================================== ==========
bandwidth  bits/s of every link, suffix k/m/g/t (``1g`` = 10⁹ bit/s)            unlimited
latency    seconds per message, suffix s/ms/us/ns (``50us``)                    0
compute    seconds of one local step, or ``measured`` (host time; not            0
           deterministic)
encode     CPU seconds to encode one message (once per round)                   0
decode     CPU seconds to decode one received message                           0
slow       ``NODE:FACTOR``: that node's CPU times × FACTOR; repeat with ``;``   none
jitter     σ of a lognormal slowdown of every local step (seeded)               0
seed       seed of the jitter                                                   0
file       TOML file of per-link bandwidth/latency and per-node compute factors none
========== ==================================================================== ==========

In a TOML file (a sweep) the spec may also be a table, ``slow`` a list of ``"NODE:FACTOR"``.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["KEYS", "NetworkSpec", "network_text", "parse_network"]

#: every key of a spec, with a one-line meaning (for errors and --help)
KEYS = {
    "bandwidth": "bits/s per link, e.g. 1g",
    "latency": "seconds per message, e.g. 50us",
    "compute": "seconds per local step, e.g. 30ms, or measured",
    "encode": "CPU seconds per encoded message, e.g. 1ms",
    "decode": "CPU seconds per decoded message, e.g. 1ms",
    "slow": "NODE:FACTOR, e.g. 3:4 (repeat with ;)",
    "jitter": "sigma of a lognormal slowdown per step, e.g. 0.1",
    "seed": "seed of the jitter",
    "file": "TOML file of per-link and per-node values",
}
EXAMPLE = "bandwidth=1g,latency=50us,compute=30ms"
_RATE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUMBER = r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)"


@dataclass(frozen=True)
class NetworkSpec:
    """A parsed network model; times in seconds, bandwidths in bits per second.

    Attributes
    ----------
    compute
        Seconds of one local step; ``None`` means measured on the host.
    slow
        ``{node: factor}`` multiplying that node's CPU times (compute, encode, decode).
    links
        ``{(a, b): (bandwidth, latency)}`` with ``a < b``, from ``file`` (both directions).
    factors
        ``{node: factor}`` compute factors from ``file`` (multiplied with ``slow``).
    """

    text: str = ""
    bandwidth: float = math.inf
    latency: float = 0.0
    compute: float | None = 0.0
    encode: float = 0.0
    decode: float = 0.0
    slow: dict[int, float] = field(default_factory=dict)
    jitter: float = 0.0
    seed: int = 0
    file: str | None = None
    links: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)
    factors: dict[int, float] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether the compute time is the host's (the clock is then not deterministic)."""
        return self.compute is None

    def factor(self, node: int) -> float:
        """CPU slowdown of ``node``: its ``slow`` factor times its file factor."""
        return self.slow.get(node, 1.0) * self.factors.get(node, 1.0)

    def link(self, a: int, b: int) -> tuple[float, float]:
        """``(bandwidth, latency)`` of the link between ``a`` and ``b``."""
        return self.links.get((min(a, b), max(a, b)), (self.bandwidth, self.latency))

    def check_graph(self, neighbors: list[list[int]]) -> None:
        """Refuse nodes and links that are not in the graph of ``len(neighbors)`` nodes."""
        n = len(neighbors)
        for what, nodes in (("slow", self.slow), (f"file {self.file}", self.factors)):
            bad = sorted(i for i in nodes if not 0 <= i < n)
            if bad:
                raise UsageError(f"network {what} names node {bad[0]}, but the graph has "
                                 f"nodes 0..{n - 1}; name a node of the topology.")
        for a, b in self.links:
            if not (0 <= a < n and b in neighbors[a]):
                raise UsageError(f"network file {self.file} gives link {a}-{b}, which is not "
                                 f"an edge of the graph ({n} nodes); list only edges of the "
                                 "topology.")

    def to_dict(self) -> dict[str, Any]:
        """The resolved values, for ``config.json`` (``inf`` bandwidth as ``null``)."""
        return {"spec": self.text,
                "bandwidth_bit_s": None if math.isinf(self.bandwidth) else self.bandwidth,
                "latency_s": self.latency,
                "compute_s": "measured" if self.compute is None else self.compute,
                "encode_s": self.encode, "decode_s": self.decode,
                "slow": {str(k): v for k, v in sorted(self.slow.items())},
                "jitter": self.jitter, "seed": self.seed, "file": self.file,
                "links": [[a, b, bw, lat] for (a, b), (bw, lat) in sorted(self.links.items())],
                "compute_factors": {str(k): v for k, v in sorted(self.factors.items())}}


def _fail(key: str, value: object, need: str, example: str) -> UsageError:
    return UsageError(f"network {key} must be {need}, got {value!r}; e.g. {key}={example}.")


def _quantity(key: str, value: str, units: dict[str, float], need: str,
              example: str) -> float:
    text = str(value).strip().lower()
    if text.startswith("-"):
        raise _fail(key, value, need + " (not negative)", example)
    match = re.fullmatch(_NUMBER + r"\s*([a-zµ]*)", text)
    if not match or match.group(2) not in units:
        raise _fail(key, value, need, example)
    return float(match.group(1)) * units[match.group(2)]


def parse_bandwidth(value: str, key: str = "bandwidth") -> float:
    """``"1g"`` → 1e9 bits/s; must be > 0."""
    bw = _quantity(key, value, _RATE, "a positive bit rate with an optional k/m/g/t suffix",
                   "1g")
    if bw <= 0:
        raise _fail(key, value, "a positive bit rate (> 0)", "1g")
    return bw


def parse_duration(value: str, key: str) -> float:
    """``"50us"`` → 5e-5 s; must be >= 0."""
    return _quantity(key, value, _TIME, "a duration >= 0 with an optional s/ms/us/ns suffix",
                     "50us" if key == "latency" else "20ms")


def _factor(key: str, value: object, where: str) -> float:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = math.nan
    if not (f > 0 and math.isfinite(f)):
        raise UsageError(f"network {where} needs a factor > 0, got {value!r}; e.g. "
                         f"{key}=3:4 (node 3 four times slower).")
    return f


def _slow(value: object) -> dict[int, float]:
    items = value if isinstance(value, list | tuple) else str(value).split(";")
    out: dict[int, float] = {}
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        node, sep, factor = item.partition(":")
        if not sep or not node.strip().isdigit():
            raise _fail("slow", item, "NODE:FACTOR (a node number and a factor > 0)", "3:4")
        out[int(node)] = _factor("slow", factor, f"slow={item}")
    return out


def _load_file(path: str) -> tuple[dict, dict]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"network file={path} cannot be read ({exc.strerror or exc}); give "
                         "a TOML file of [[link]] and [[node]] tables.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"network file={path} is not valid TOML: {exc}.") from None
    unknown = set(data) - {"link", "node"}
    if unknown:
        raise UsageError(f"network file={path}: unknown table {sorted(unknown)[0]!r}; it may "
                         "hold [[link]] (nodes = [A, B], bandwidth, latency) and [[node]] "
                         "(id, compute) tables.")
    links: dict[tuple[int, int], tuple[float, float]] = {}
    for entry in data.get("link", []):
        nodes = entry.get("nodes")
        if (not isinstance(nodes, list) or len(nodes) != 2
                or not all(isinstance(v, int) for v in nodes) or nodes[0] == nodes[1]):
            raise UsageError(f"network file={path}: every [[link]] needs nodes = [A, B] (two "
                             f"different node numbers), got {nodes!r}.")
        a, b = sorted(nodes)
        extra = set(entry) - {"nodes", "bandwidth", "latency"}
        if extra:
            raise UsageError(f"network file={path}: unknown key {sorted(extra)[0]!r} in the "
                             f"[[link]] {a}-{b}; use bandwidth and latency.")
        links[(a, b)] = (entry.get("bandwidth"), entry.get("latency"))
    factors = {}
    for entry in data.get("node", []):
        node = entry.get("id")
        if not isinstance(node, int) or node < 0 or set(entry) - {"id", "compute"}:
            raise UsageError(f"network file={path}: every [[node]] needs id = NODE and "
                             f"compute = FACTOR, got {entry!r}.")
        factors[node] = _factor("compute", entry.get("compute"), f"file {path} node {node}")
    return links, factors


def _normalize(spec: str | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(spec, Mapping):
        return [(str(k).strip().lower(), v) for k, v in spec.items()]
    items = []
    for part in str(spec).split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"network spec entries are key=value, got {part.strip()!r}; "
                             f"e.g. --network {EXAMPLE}.")
        items.append((key.strip().lower(), value.strip()))
    return items


def _text(items: list[tuple[str, Any]]) -> str:
    def show(v: Any) -> str:
        return ";".join(map(str, v)) if isinstance(v, list | tuple) else str(v)

    return ",".join(f"{k}={show(v)}" for k, v in items)


def parse_network(spec: str | Mapping[str, Any] | NetworkSpec) -> NetworkSpec:
    """Parse a ``--network`` SPEC (string or TOML table) into a :class:`NetworkSpec`.

    Raises :class:`~choco.errors.UsageError` for an unknown key (with the closest names), a
    value out of range (negative bandwidth or latency, a factor <= 0) or a file that does
    not read. Nodes and links are checked against the graph later
    (:meth:`NetworkSpec.check_graph`).
    """
    if isinstance(spec, NetworkSpec):
        return spec
    items = _normalize(spec)
    if not items:
        raise UsageError(f"--network needs at least one key=value, got {spec!r}; e.g. "
                         f"--network {EXAMPLE}.")
    values: dict[str, Any] = {"text": _text(items)}
    slow: dict[int, float] = {}
    for key, value in items:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" did you mean {close[0]}?" if close else ""
            raise UsageError(f"network spec: unknown key {key!r};{hint} valid keys: "
                             f"{', '.join(KEYS)} (e.g. --network {EXAMPLE}).")
        if key == "bandwidth":
            values[key] = parse_bandwidth(value)
        elif key == "compute" and str(value).strip().lower() == "measured":
            values[key] = None
        elif key in ("latency", "compute", "encode", "decode"):
            values[key] = parse_duration(value, key)
        elif key == "slow":
            slow.update(_slow(value))
        elif key == "jitter":
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                values[key] = math.nan
            if not (values[key] >= 0 and math.isfinite(values[key])):
                raise _fail(key, value, "a number >= 0 (σ of a lognormal factor)", "0.1")
        elif key == "seed":
            if not str(value).strip().isdigit():
                raise _fail(key, value, "a whole number >= 0", "1")
            values[key] = int(str(value).strip())
        else:  # file
            values[key] = str(value)
    values["slow"] = slow
    if "file" in values:
        raw_links, values["factors"] = _load_file(values["file"])
        bw_default = values.get("bandwidth", math.inf)
        lat_default = values.get("latency", 0.0)
        values["links"] = {
            ab: (bw_default if bw is None else parse_bandwidth(bw, f"file link {ab} bandwidth"),
                 lat_default if lat is None else parse_duration(str(lat), "latency"))
            for ab, (bw, lat) in raw_links.items()}
    return NetworkSpec(**values)


def network_text(spec: str | Mapping[str, Any]) -> str:
    """A spec (string or TOML table) checked and written as one ``key=value,...`` string
    (``""`` stays ``""``: no network)."""
    if isinstance(spec, str) and not spec.strip():
        return ""
    return parse_network(spec).text

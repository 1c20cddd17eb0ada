"""``choco-train`` configuration: one frozen dataclass, filled from TOML and the command line.

Precedence: defaults < ``--config FILE.toml`` < command-line options. Unknown TOML keys raise
with the closest valid names. Every field has a comment; ``python -m choco.train --help``
shows the same text.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .algorithms import ALGORITHMS
from .cli import ArgumentParser, prog_name


@dataclass(frozen=True)
class TrainConfig:
    """The resolved configuration of one training run (written to ``config.json``)."""

    # --- network
    topology: str = field(default="ring:8", metadata={"help": "ring:8, torus:4x4, social, "
                          "complete:8, ...; time-varying: onepeer:8, base:12[:K], "
                          "matching:16[:seed=S], SPEC+pga:H; 'ring' or 'onepeer' without a "
                          "size takes the number of nodes"})
    mixing: str = field(default="metropolis", metadata={"help": "metropolis|maxdegree|uniform"})
    backend: str = field(default="auto", metadata={
        "help": "auto (mpi when launched by mpiexec/srun with >1 rank, torch when launched "
        "by torchrun, else local) | local | mpi | torch"})
    device: str = field(default="auto", metadata={
        "help": "cpu | cuda (one GPU per local rank) | auto (cuda when available)"})
    nodes: int = field(default=0, metadata={
        "help": "nodes for --backend local (0: the topology's size)"})
    network: str = field(default="", metadata={
        "help": "simulate this network in process (--backend local): key=value,... with "
        "bandwidth (bit/s, k/m/g), latency (us/ms), compute (per step, or measured), encode, "
        "decode, slow=NODE:FACTOR;..., jitter, seed, file=NET.toml; adds sim_time_s to every "
        "metrics row (docs/simulation.md); empty: none"})
    # --- algorithm
    algorithm: str = field(default="choco", metadata={"help": " | ".join(ALGORITHMS)})
    compressor: str = field(default="sign", metadata={
        "help": "choco/dcd/ecd compressor spec: sign, topk:0.01, qsgd:16, ..."})
    gamma: str = field(default="auto", metadata={
        "help": "CHOCO consensus step in (0, 1], or 'auto': 1 for identity, else the consensus "
        "tuner choco.tuning.tune_gamma on this topology and compressor (docs/gamma.md)"})
    order: str = field(default="overlap", metadata={
        "help": "overlap (ICLR Alg. 1, exchange in flight during the next step) | sync"})
    gossip_every: int = field(default=1, metadata={"help": "local steps between gossip rounds"})
    outer: str = field(default="", metadata={
        "help": "outer optimizer on the pseudo-gradient anchor - x before every gossip round "
        "(DiLoCo-style, with --gossip-every H): nesterov:lr=0.7,momentum=0.9 | sgd:lr=1 | "
        "adam:lr=0.001; empty: none"})
    momentum_mode: str = field(default="local", metadata={
        "help": "local | quasi-global (momentum from the model's displacement, "
        "arXiv:2102.04761; choco, exact, gt, beer)"})
    per_tensor: bool = field(default=True, metadata={
        "help": "compress each parameter tensor separately (the paper), else the flat vector"})
    # --- model and data
    model: str = field(default="mlp", metadata={"help": "MODELS"})
    model_args: str = field(default="", metadata={
        "help": "model options as key=value,... e.g. hidden_size=200,embed_dim=200,num_layers=2"})
    dataset: str = field(default="digits", metadata={
        "help": "digits (embedded) | cifar10 | wikitext2 | synthetic"})
    data_dir: str = field(default="", metadata={
        "help": "folder holding cifar-10-batches-py/ or wiki.*.tokens"})
    partition: str = field(default="iid", metadata={"help": "iid | dirichlet:ALPHA | by-class"})
    # --- optimisation
    epochs: int = field(default=60, metadata={"help": "training epochs"})
    batch_size: int = field(default=16, metadata={"help": "minibatch size per node"})
    lr: float = field(default=0.05, metadata={"help": "base learning rate (before scaling)"})
    lr_scaling: str = field(default="none", metadata={
        "help": "none | paper: peak = lr * batch/base_batch * |N_i ∪ {i}| (n for allreduce)"})
    base_batch_size: int = field(default=0, metadata={
        "help": "base batch of the paper's LR rule (0: --batch-size)"})
    momentum: float = field(default=0.9, metadata={"help": "local momentum (never sent)"})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=1e-4, metadata={
        "help": "L2 on weights (not on BatchNorm or biases)"})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "linear warm-up from lr to the peak over this many epochs"})
    lr_milestones: tuple[int, ...] = field(default=(), metadata={
        "help": "epochs at which the LR is divided by 10, e.g. 150,225"})
    bptt: int = field(default=30, metadata={"help": "sequence length for language models"})
    clip: float = field(default=0.0, metadata={"help": "gradient-norm clip (0: off)"})
    divergence_check: int = field(default=25, metadata={
        "help": "steps between the collective checks for a non-finite loss (and at the end "
        "of every epoch); in between no global collective runs"})
    # --- run
    seed: int = field(default=0, metadata={"help": "base seed (data: seed + rank)"})
    out: str = field(default="runs/default", metadata={"help": "output folder"})
    checkpoint_every: int = field(default=0, metadata={"help": "epochs between checkpoints"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest complete checkpoint in OUT/checkpoint"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an earlier run in --out (its outputs and checkpoints are deleted); "
        "without it a folder holding a run is refused"})
    eval_local: bool = field(default=True, metadata={
        "help": "also test each node's own model (test_accuracy_local)"})
    quiet: bool = field(default=False, metadata={"help": "no progress lines"})
    json: bool = field(default=False, metadata={"help": "print a one-line JSON summary last"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_BOOL = {"per_tensor", "nesterov", "resume", "overwrite", "eval_local", "quiet", "json"}


#: what each field type must be, in words
_KINDS = {int: "a whole number", float: "a number", str: "a string"}


def _convert(name: str, value: Any) -> Any:
    """Coerce a TOML or command-line value to the field's type, with a clear error."""
    default = FIELDS[name].default
    option = "--" + name.replace("_", "-")
    if name == "lr_milestones":
        parts = value.replace(",", " ").split() if isinstance(value, str) else value
        try:
            return tuple(int(v) for v in parts)
        except (TypeError, ValueError):
            raise UsageError(
                f"{option} must be a list of whole epoch numbers separated by commas (e.g. "
                f"150,225; in TOML [150, 225]), got {value!r}."
            ) from None
    if name in _BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UsageError(f"{option} must be true or false, got {value!r}.")
    if name == "gamma":
        return str(value)
    if name == "network":  # a string, or a TOML table in a config or sweep file
        from ..sim.spec import network_text

        return network_text(value if isinstance(value, dict) else str(value))
    kind: type = type(default)
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"{option} must be {_KINDS.get(kind, kind.__name__)} (default {default!r}), got "
            f"{value!r}."
        ) from None


def parse_model_args(text: str) -> dict[str, Any]:
    """``"hidden_size=64,tie_weights=false"`` → ``{"hidden_size": 64, "tie_weights": False}``."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-args takes key=value pairs separated by commas, got "
                             f"{item!r}; e.g. hidden_size=200,num_layers=2.")
        v = value.strip()
        low = v.lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
            continue
        for cast in (int, float):
            try:
                out[key.strip()] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = v
    return out


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config (flat table, keys with '_' or '-'); unknown keys raise."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path}: file not found; pass a TOML file of options.")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError("--config needs Python >= 3.11 or `pip install tomli`") from None
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path} is not valid TOML: {exc}") from None
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=3)
            hint = f" did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"--config {path}: unknown key {key!r};{hint} valid keys: "
                             f"{', '.join(FIELDS)}.")
        out[name] = _convert(name, value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``choco-train`` parser: one option per :class:`TrainConfig` field."""
    from ..models import available_models

    p = ArgumentParser(
        prog=prog_name("choco-train", "choco.train"),
        description="Decentralized training with CHOCO-SGD (arXiv:1907.09356). With no "
        "options: sign-compressed CHOCO on a ring of 8 nodes, MLP on the embedded digits set. "
        "Options can also come from a TOML file (--config); the command line overrides it.",
    )
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file of options, keys as below with '_' or '-'")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        text = f.metadata["help"]
        if text == "MODELS":
            text = " | ".join(available_models())
        if name in _BOOL:
            p.add_argument(flag, dest=name, default=None, nargs="?", const="true",
                           metavar="true|false",
                           help=f"{text} (default: {str(f.default).lower()})")
            if f.default:
                p.add_argument("--no-" + name.replace("_", "-"), dest=name,
                               action="store_const", const="false", help=argparse.SUPPRESS)
        else:
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            metavar = "E1,E2" if isinstance(f.default, tuple) else name.upper()
            shown = f" (default: {default})" if default not in ("", None) else ""
            p.add_argument(flag, dest=name, default=None, metavar=metavar,
                           help=f"{text}{shown}")
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then the TOML file, then command-line options; validated types."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_toml(args.config))
    for name in FIELDS:
        raw = getattr(args, name)
        if raw is not None:
            values[name] = _convert(name, raw)
    return TrainConfig(**values)

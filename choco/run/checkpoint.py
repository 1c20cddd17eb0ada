"""Checkpoints as generations: a crash at any moment leaves a complete one to resume from.

Layout of ``OUT/checkpoint/``::

    epoch-000004/rank0.pt ... rank{n-1}.pt   one file per rank, each written atomically
    epoch-000004/manifest.json               written last, by rank 0, once every rank's file
                                             is in place: epoch, n, SHA-256 and size of every
                                             file, the run's identity, the checkpoint period

A generation is complete when its manifest exists. ``--resume`` takes the newest complete
generation, checks that every rank's file matches its checksum, and refuses a checkpoint of
another run (each differing identity field is named, with both values). After a new
generation is complete, rank 0 deletes the older generations, incomplete ones, and stray
temporary files. Files are read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never arbitrary pickles.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from ..comm.base import Communicator
from ..errors import UsageError
from .files import atomic_write, atomic_write_json

__all__ = ["Generation", "find_latest", "load_rank_state", "save_generation"]

FOLDER = "checkpoint"
MANIFEST = "manifest.json"
_GEN = re.compile(r"^epoch-(\d{6,})$")


def generation_name(epoch: int) -> str:
    return f"epoch-{epoch:06d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Generation:
    """A complete checkpoint generation: its folder and its manifest."""

    path: Path
    epoch: int
    n: int
    identity: dict[str, Any]
    checkpoint_every: int
    files: dict[str, dict[str, Any]]


def _read_manifest(folder: Path) -> Generation | None:
    """The generation in ``folder``, or ``None`` if it has no valid manifest (incomplete)."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
        return Generation(folder, int(meta["epoch"]), int(meta["n"]), dict(meta["identity"]),
                          int(meta["checkpoint_every"]), dict(meta["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_latest(out: Path) -> Generation | None:
    """The newest complete generation under ``out/checkpoint`` (``None``: there is none).

    Raises :class:`UsageError` for a checkpoint folder in the layout of an older choco.
    """
    root = Path(out) / FOLDER
    if not root.is_dir():
        return None
    gens = sorted((int(m.group(1)), p) for p in root.iterdir()
                  if p.is_dir() and (m := _GEN.match(p.name)))
    for _, folder in reversed(gens):
        gen = _read_manifest(folder)
        if gen is not None:
            return gen
    if (root / "meta.json").is_file():
        raise UsageError(f"{root} holds a checkpoint in the layout of an older choco "
                         "(rank*.pt beside meta.json), which cannot be verified; start the "
                         "run again with --overwrite.")
    return None


def identity_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"field: checkpoint X, this run Y"`` for every field that differs."""
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {now.get(k)!r}"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def check_resumable(out: Path, identity: dict[str, Any], n: int) -> Generation:
    """The generation ``--resume`` will use, checked against this run (no file is read
    beyond the manifests). Raises :class:`UsageError` naming what is missing or differs."""
    gen = find_latest(out)
    root = Path(out) / FOLDER
    if gen is None:
        raise UsageError(f"--resume needs a complete checkpoint in {root}, but there is none; "
                         "run with --checkpoint-every E first (same --out), or drop --resume.")
    if gen.n != n:
        raise UsageError(f"the checkpoint {gen.path} has {gen.n} nodes, this run {n}; resume "
                         "with the same number of nodes.")
    diffs = identity_differences(gen.identity, identity)
    if diffs:
        raise UsageError(f"--resume refuses the checkpoint {gen.path}: it is from another run "
                         f"({'; '.join(diffs)}); resume with the same options, or start a new "
                         "run with another --out (or --overwrite).")
    for name, expected in sorted(gen.files.items()):  # sizes now; checksums when loading
        path = gen.path / name
        size = path.stat().st_size if path.is_file() else None
        if size != expected["bytes"]:
            raise UsageError(f"checkpoint file {path} is damaged: "
                             f"{'missing' if size is None else f'{size} bytes'}, the manifest "
                             f"says {expected['bytes']}; resume from an intact copy, or start "
                             "again with --overwrite.")
    return gen


def _agree(comm: Communicator, error: str | None) -> None:
    """Raise the first rank's error on every rank (so no rank waits for a failed one)."""
    errors = [e for e in comm.allgather_object(error) if e]
    if errors:
        raise UsageError(errors[0])


def load_rank_state(comm: Communicator, gen: Generation) -> dict[str, Any]:
    """This rank's state from ``gen``, checksum-verified, loaded with ``weights_only=True``.

    Collective: every rank raises the same error if any rank's file is missing or damaged.
    """
    name = f"rank{comm.rank}.pt"
    path = gen.path / name
    state: dict[str, Any] | None = None
    error = None
    try:
        data = path.read_bytes()
        expected = gen.files[name]
        if len(data) != expected["bytes"] or _sha256(data) != expected["sha256"]:
            error = (f"checkpoint file {path} is damaged: {len(data)} bytes with another "
                     f"checksum than the manifest's {expected['bytes']}; resume from an intact "
                     "copy, or start again with --overwrite.")
        else:
            state = torch.load(io.BytesIO(data), weights_only=True)
            if state.get("epoch") != gen.epoch:
                error = (f"checkpoint file {path} is from epoch {state.get('epoch')}, its "
                         f"manifest says {gen.epoch}; start again with --overwrite.")
    except (OSError, KeyError) as exc:
        error = (f"checkpoint file {path} cannot be read ({exc}); resume from an intact copy, "
                 "or start again with --overwrite.")
    except Exception as exc:
        error = (f"checkpoint file {path} does not load as a choco checkpoint ({exc}); start "
                 "again with --overwrite.")
    _agree(comm, error)
    if state is None:  # unreachable: _agree raised for every failure above
        raise UsageError(f"checkpoint file {path} could not be loaded; start again with "
                         "--overwrite.")
    return state


def save_generation(comm: Communicator, out: Path, epoch: int, state: dict[str, Any],
                    identity: dict[str, Any], checkpoint_every: int) -> Path:
    """Write this rank's ``state`` into generation ``epoch`` (collective).

    Every rank writes its file atomically; rank 0 then writes the manifest with every file's
    checksum (the generation is complete from that moment) and removes older generations,
    incomplete ones and stray temporaries.
    """
    root = Path(out) / FOLDER
    gen = root / generation_name(epoch)
    gen.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    name = f"rank{comm.rank}.pt"

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(gen / name, write)
    files = dict(comm.allgather_object((name, {"sha256": _sha256(data), "bytes": len(data)})))
    if comm.rank == 0:
        atomic_write_json(gen / MANIFEST, {
            "epoch": epoch, "n": comm.size, "identity": identity,
            "checkpoint_every": checkpoint_every, "files": files})
        _clean(root, keep=gen)
    comm.barrier()  # nobody goes on (or exits) before the generation is complete
    return gen


def _clean(root: Path, keep: Path) -> None:
    """Remove every generation but ``keep``, and stray temporary files."""
    for path in root.iterdir():
        if path == keep:
            continue
        if path.is_dir() and _GEN.match(path.name):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
    for path in keep.iterdir():
        if path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)

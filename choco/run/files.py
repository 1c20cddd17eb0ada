"""Files the command-line programs read and write, and the checks made before any work.

Every output is written to a temporary file in the same folder and renamed into place, so a
crash never leaves a half-written file under the final name; the file gets the permission
bits of the file it replaces, or those of a new file (``0o666`` less the umask).

Checks shared by every program, raising :class:`~choco.errors.UsageError` (one paragraph:
requirement, value received, fix), made before anything is allocated or written:

* :func:`check_output_file`: the output's folder exists, is a folder and is writable; the
  path is not a folder, not an input of the run, and not an existing file unless
  ``--overwrite`` is given;
* :func:`check_memory`: a memory estimate against :func:`memory_limit` (1/4 of physical
  memory, or ``CHOCO_MEMORY_LIMIT`` bytes), with the bytes needed in the message.

The memory limit itself is :mod:`topologies.memory` (the topology builders check against it
too); the command-line parser with one-paragraph errors is :class:`choco.run.cli.ArgumentParser`
(re-exported here).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from topologies.memory import check_memory, format_bytes, largest, memory_limit

from ..errors import ChocoError, UsageError
from .cli import ArgumentParser

__all__ = ["ArgumentParser", "atomic_savez", "atomic_torch_save", "atomic_write",
           "atomic_write_json", "atomic_write_text", "check_memory", "check_output_file",
           "format_bytes", "largest", "load_npy", "memory_limit", "new_file_mode", "spec_file"]

#: what a check raises: a :class:`~choco.errors.ChocoError` type taking the message
ErrorType = Callable[[str], ChocoError]


def spec_file(spec: object) -> str | None:
    """The file a topology spec reads (``"file:W.npy"`` → ``"W.npy"``), else ``None``."""
    if not isinstance(spec, str):
        return None
    name, colon, rest = spec.strip().partition(":")
    return rest if colon and name.strip().lower() == "file" and rest.strip() else None


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


#: the process's umask, read once at import (reading it means setting it for an instant)
UMASK = _umask()


def new_file_mode(path: str | os.PathLike[str]) -> int:
    """Permission bits for a file written to ``path`` through a temporary file and a rename.

    The bits of the file it replaces, else those of a newly created file (``0o666`` less
    the umask), not the ``0o600`` that :func:`tempfile.mkstemp` gives.
    """
    try:
        return os.stat(path).st_mode & 0o777
    except (OSError, ValueError):
        return 0o666 & ~UMASK


def _same_file(path: Path, other: Path) -> bool:
    try:
        if path.resolve() == other.resolve():
            return True
    except RuntimeError:  # a symlink loop (Python < 3.13): compare the files below
        pass
    try:
        return os.path.samefile(path, other)
    except (OSError, ValueError):  # one of them does not exist: not the same file
        return False


def check_output_file(path: str | os.PathLike[str], option: str, *,
                      inputs: Iterable[str | os.PathLike[str] | None] = (),
                      overwrite: bool = False, error: ErrorType = UsageError) -> Path:
    """Check, before any work, that ``path`` can be written without destroying anything.

    Refused, each with one paragraph naming ``option``: an empty path; a path that is one
    of ``inputs`` (same resolved path, or the same file through a link); a missing parent
    folder, or a parent that is a file; a path that is a folder or not a regular file; an
    existing file unless ``overwrite``; a folder where no file can be created (probed with
    a temporary file that is removed at once, since permission bits do not stop root and
    some folders, such as ``/proc``, refuse new files whatever the bits say).
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    text = os.fspath(path)
    out = Path(text)
    other = f"choose another {option}"
    try:
        if not text.strip():
            raise error(f"{option} must name a file, got an empty path; {other}")
        for given in inputs:
            if given is not None and str(given).strip() and _same_file(out, Path(given)):
                raise error(
                    f"{option} must not be an input of this run (writing it would destroy "
                    f"the input), got {option} {text}, which is the input {given}; {other}"
                )
        parent = out.parent
        if not parent.exists():
            raise error(f"{option} must be in an existing folder, got {text} (the folder "
                        f"{parent} does not exist); create it with mkdir -p {parent}, or "
                        f"{other}")
        if not parent.is_dir():
            raise error(f"{option} must be in a folder, got {text} ({parent} is a file, not "
                        f"a folder); {other}")
        if out.is_dir():
            raise error(f"{option} must be a file, got {text}, which is a folder; name a file "
                        f"inside it, or {other}")
        if out.exists() or out.is_symlink():
            if out.exists() and not out.is_file():
                raise error(f"{option} must be a regular file, got {text}, which exists and "
                            f"is not one (a device, pipe or socket); {other}")
            if not overwrite:
                raise error(f"{option} must not be an existing file unless --overwrite is "
                            f"given, got {text}, which exists; pass --overwrite to replace "
                            f"it, or {other}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise error(f"{option} must be in a folder you can write to, got {text} (no "
                        f"write permission in {parent}); {other}")
        fd, probe = tempfile.mkstemp(dir=parent, prefix=out.name + ".", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except ChocoError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # /proc, a read-only disk, a long name
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"{option} must be a path where a file can be created, got {text!r} "
                    f"({reason}); {other}") from None
    return out


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode()

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """``numpy.savez`` to exactly ``path`` (no ``.npz`` appended), atomically."""
    named: dict[str, Any] = dict(arrays)
    atomic_write(path, lambda fh: np.savez(fh, **named))


def load_npy(path: Path, option: str, *, ndim: int, dtypes: Sequence[type],
             holding: str, example: str) -> np.ndarray:
    """Load a ``.npy`` array given on the command line, or raise a one-paragraph error.

    Checks, in order: the file exists, is a regular file and fits in memory (its size
    against :func:`memory_limit`, before it is read), holds a plain numpy array (no
    pickles), has ``ndim`` dimensions and at least one element, its dtype is one of
    ``dtypes``, and every entry is finite. ``holding`` says what the file must hold (``"a
    1-D float array"``), ``example`` how to make one
    (``"numpy.save('x.npy', numpy.random.randn(1000))"``).
    """
    path = Path(path)
    if not path.is_file():
        why = "a folder" if path.is_dir() else "not found" if not path.exists() else \
            "not a regular file"
        raise UsageError(f"{option} must be an existing .npy file holding {holding}, got "
                         f"{path} ({why}); create one with {example}.")
    check_memory(path.stat().st_size, f"{option} {path}", "reading the file",
                 f"pass a smaller {option}")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{option} must be a .npy array written by numpy.save, got {path}, "
                         f"which is not readable as one ({exc}); write it with "
                         f"{example}.") from None
    if not isinstance(x, np.ndarray):  # an .npz archive
        x.close()
        raise UsageError(f"{option} takes one .npy array holding {holding}, got {path}, an "
                         f".npz archive; save one array with {example}.")
    if x.ndim != ndim or x.size == 0:
        raise UsageError(f"{option} must hold {holding} (non-empty, {ndim}-D), got shape "
                         f"{x.shape}; create one with {example}.")
    if x.dtype not in [np.dtype(d) for d in dtypes]:
        names = [np.dtype(d).name for d in dtypes]
        either = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise UsageError(f"{option} must hold {either} values, got dtype {x.dtype}; convert "
                         "with x.astype(numpy.float32).")
    finite = np.isfinite(x)
    if not finite.all():
        bad = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise UsageError(f"{option} must hold finite values only, got NaN or Inf in {path} "
                         f"(first at index {bad}); replace them, e.g. with numpy.nan_to_num.")
    return x

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
  memory, or ``CHOCO_MEMORY_LIMIT`` bytes), with the bytes needed in the message;
* :class:`ArgumentParser`: argparse whose errors (``--dim abc``, an unknown option, a
  missing argument) are one paragraph too, exit status 2, without the usage block.

They live in the dependency-free module ``topologies._guards``, so that ``python -m
topologies`` (a lower layer, which cannot import the run layer) uses the same code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from topologies._guards import (
    ArgumentParser,
    atomic_write,
    check_memory,
    check_output_file,
    format_bytes,
    largest,
    memory_limit,
    spec_file,
)

from ..errors import UsageError

__all__ = ["ArgumentParser", "atomic_savez", "atomic_torch_save", "atomic_write",
           "atomic_write_json", "atomic_write_text", "check_memory", "check_output_file",
           "format_bytes", "largest", "load_npy", "memory_limit", "spec_file"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """``numpy.savez`` to exactly ``path`` (no ``.npz`` appended), atomically."""
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


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

"""Files the command-line programs read and write: atomic writes and ``.npy`` inputs.

Every output is written to a temporary file in the same folder and renamed into place, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import UsageError

__all__ = ["atomic_savez", "atomic_torch_save", "atomic_write", "atomic_write_json",
           "atomic_write_text", "load_npy"]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    Checks, in order: the file exists and holds a plain numpy array (no pickles), it has
    ``ndim`` dimensions and at least one element, its dtype is one of ``dtypes``, and every
    entry is finite. ``holding`` says what the file must hold (``"a 1-D float array"``),
    ``example`` how to make one (``"numpy.save('x.npy', numpy.random.randn(1000))"``).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{option} must be an existing .npy file holding {holding}, got "
                         f"{path} (not found); create one with {example}.")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{option} {path} is not a readable .npy array ({exc}); write it "
                         f"with numpy.save, e.g. {example}.") from None
    if not isinstance(x, np.ndarray):  # an .npz archive
        raise UsageError(f"{option} {path} is an .npz archive, but {option} takes one .npy "
                         f"array holding {holding}; save one array with {example}.")
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
        raise UsageError(f"{option} {path} holds NaN or Inf (first at index {bad}); every "
                         "entry must be finite (replace them, e.g. numpy.nan_to_num).")
    return x

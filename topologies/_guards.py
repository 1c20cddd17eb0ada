"""Checks made before anything is allocated or written (standard library only, private).

Shared by this package and by the choco command-line programs (the run layer re-exports
them from :mod:`choco.run.files`), so every program refuses the same things the same way:

* :func:`check_memory`: a size whose memory estimate exceeds :func:`memory_limit` (1/4 of
  the machine's physical memory, or of the container's limit, or ``CHOCO_MEMORY_LIMIT``
  bytes) is refused before the first allocation, with the estimate in the message;
* :func:`check_output_file`: an output file is checked before any work starts (its folder
  exists, is a folder and is writable; the path is not a folder, not an input, and not an
  existing file unless ``--overwrite`` is given);
* :class:`ArgumentParser`: argparse whose errors are one paragraph,
  ``error: <requirement>, got <value>; <fix>``, exit status 2, like every other user error.

Every message says what is required, the value received, and how to fix it.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, NoReturn

from choco.errors import ChocoError, UsageError

__all__ = ["MEMORY_ENV", "ArgumentParser", "check_memory", "check_output_file",
           "format_bytes", "format_count", "human_bytes", "largest", "memory_limit",
           "new_file_mode", "spec_file"]

#: environment variable overriding the memory limit, in bytes (``8e9`` is accepted)
MEMORY_ENV = "CHOCO_MEMORY_LIMIT"
#: the limit when the system reports no physical memory
FIXED_CAP = 4 * 2**30
#: cgroup files holding a container's memory limit (v2, then v1)
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")

ErrorType = Callable[[str], ChocoError]


def format_count(count: int) -> str:
    """``8000000000`` → ``"8,000,000,000"``; from 10^15 on ``"4.8e+19"`` (any size of int)."""
    count = int(count)
    if count < 10**15:
        return f"{count:,}"
    digits = str(count)
    mantissa = f"{digits[0]}.{digits[1:3]}".rstrip("0").rstrip(".")
    return f"{mantissa}e+{len(digits) - 1:02d}"


def format_bytes(count: int | float) -> str:
    """``8000000000`` → ``"8,000,000,000 bytes (7.45 GiB)"``; ``"4.8e+19 bytes (41.6 EiB)"``."""
    count = int(count)
    human = f" ({human_bytes(count)})" if 1024 <= count < 1024**7 else ""
    return f"{format_count(count)} bytes{human}"


def human_bytes(count: int | float) -> str:
    """``8000000000`` → ``"7.45 GiB"``."""
    if count >= 1024**7:
        return f"{format_count(count)} bytes"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024:
            return f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} EiB"


def _container_limit() -> int | None:
    for name in _CGROUP_LIMITS:
        try:
            text = Path(name).read_text().strip()
        except (OSError, ValueError):
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            return int(text)
    return None


def _physical_memory() -> int | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return total if total > 0 else None


def memory_limit(error: ErrorType = UsageError) -> tuple[int, str]:
    """The most memory one program may plan to use, and where that number comes from.

    ``CHOCO_MEMORY_LIMIT`` (bytes) if set; else 1/4 of the smaller of the physical memory
    (``os.sysconf``) and the container's cgroup limit; else a fixed cap of 4 GiB.
    """
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            value = int(float(text))
        except (ValueError, OverflowError):
            value = 0
        if value < 1:
            raise error(
                f"{MEMORY_ENV} must be a positive number of bytes, got {text!r}; unset it "
                f"(the limit is then 1/4 of physical memory) or write e.g. {MEMORY_ENV}=8e9"
            )
        return value, f"set by {MEMORY_ENV}"
    physical, container = _physical_memory(), _container_limit()
    if container is not None and (physical is None or container < physical):
        return container // 4, f"1/4 of this container's memory ({human_bytes(container)})"
    if physical is not None:
        return physical // 4, f"1/4 of this machine's physical memory ({human_bytes(physical)})"
    return FIXED_CAP, "a fixed cap, since this system does not report its physical memory"


def check_memory(need: int | float, what: str, detail: str, fix: str,
                 error: ErrorType = UsageError) -> None:
    """Raise ``error`` if ``need`` bytes exceed :func:`memory_limit`.

    ``what`` is what must fit (``"topology 'ring:10**9'"``), ``detail`` how ``need`` was
    estimated (it follows "got an estimated N bytes for"), ``fix`` how to ask for less
    (``"use at most n = 11,000 nodes"``).
    """
    limit, source = memory_limit(error)
    if need > limit:
        raise error(
            f"{what} must fit in the memory limit of {format_bytes(limit)}, {source}, got an "
            f"estimated {format_bytes(need)} for {detail}; {fix}, or raise the limit with "
            f"{MEMORY_ENV}=BYTES"
        )


def largest(fits: Callable[[int], bool], high: int = 2**62) -> int:
    """The largest ``k >= 0`` with ``fits(k)`` (``fits`` must be monotone), 0 if none."""
    if not fits(1):
        return 0
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


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


_INVALID_VALUE = re.compile(r"argument (?P<opt>[^:]+): invalid (?P<kind>\w+) value: (?P<got>.*)")
_INVALID_CHOICE = re.compile(
    r"argument (?P<opt>[^:]+): invalid choice: (?P<got>.*?) \(choose from (?P<choices>.*)\)")
_EXPECTED = re.compile(r"argument (?P<opt>[^:]+): expected (?P<what>.*)")
_REQUIRED = re.compile(r"the following arguments are required: (?P<names>.*)")
_UNKNOWN = re.compile(r"unrecognized arguments: (?P<got>.*)")
_AMBIGUOUS = re.compile(r"ambiguous option: (?P<got>\S+) could match (?P<options>.*)")
_KINDS = {"int": "an integer", "float": "a number"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-paragraph errors on stderr and exit status 2, without the usage.

    ``--dim abc`` gives ``error: --dim must be an integer, got 'abc'; write e.g. --dim 1000
    (python -m choco.tuning --help lists every option)``. Subcommand parsers made by
    ``add_subparsers`` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.explain(message)}\n")

    def _default(self, option: str) -> str | None:
        for action in self._actions:
            if option in action.option_strings or option == action.dest:
                default = action.default
                if default is not None and default is not argparse.SUPPRESS and \
                        not isinstance(default, bool):
                    return str(default)
        return None

    def explain(self, message: str) -> str:
        """An argparse message rewritten as requirement, value received and fix."""
        help_hint = f"{self.prog} --help lists every option"
        if m := _INVALID_VALUE.fullmatch(message):
            opt = m["opt"].split("/")[0]
            kind = _KINDS.get(m["kind"], f"a valid {m['kind']}")
            default = self._default(opt)
            example = f"write e.g. {opt} {default} ({help_hint})" if default else help_hint
            return f"{opt} must be {kind}, got {m['got']}; {example}"
        if m := _INVALID_CHOICE.fullmatch(message):
            opt = m["opt"].split("/")[0]
            return (f"{opt} must be one of {m['choices']}, got {m['got']}; pick one of them "
                    f"({help_hint})")
        if m := _EXPECTED.fullmatch(message):
            opt = m["opt"].split("/")[0]
            default = self._default(opt)
            example = f"write e.g. {opt} {default}" if default else help_hint
            return f"{opt} takes {m['what'].removesuffix('s')}, got none; {example}"
        if m := _REQUIRED.fullmatch(message):
            names = m["names"]
            verb = "are" if "," in names else "is"
            return (f"{names} {verb} required, got a command line without "
                    f"{'them' if verb == 'are' else 'it'}; add {'them' if verb == 'are' else 'it'}"
                    f" ({help_hint})")
        if m := _UNKNOWN.fullmatch(message):
            return (f"every argument must be an option of {self.prog}, got the unknown "
                    f"{m['got']!r}; check the spelling ({help_hint})")
        if m := _AMBIGUOUS.fullmatch(message):
            return (f"an abbreviated option must match one option, got {m['got']}, which "
                    f"could be {m['options']}; write the option in full")
        return f"the command line must follow {help_hint}, got: {message}; see --help"


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

"""The memory limit every program plans against, checked before anything is allocated.

A size whose estimate exceeds :func:`memory_limit` (1/4 of the machine's physical memory,
or of the container's limit, or ``CHOCO_MEMORY_LIMIT`` bytes) is refused by
:func:`check_memory` before the first allocation, with the estimate in the message: the
topology builders use it for their graphs and dense mixing matrices, the command-line
programs (``choco.run``) for their own arrays. Standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from choco.errors import ChocoError, UsageError

__all__ = ["MEMORY_ENV", "check_memory", "format_bytes", "format_count", "human_bytes",
           "largest", "memory_limit"]

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
        return f"{format_count(int(count))} bytes"
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

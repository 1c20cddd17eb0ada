"""Every error type of choco, at the floor of the package (imports nothing from it).

All errors raised for bad user input or an unusable state derive from :class:`ChocoError`,
so a command-line program catches that one base and prints the message as one paragraph.
Each message says what is required, the value received, and how to fix it, e.g.
``"gamma must be in (0, 1], got 1.5; try 0.5 for sign, 0.05 for topk:0.01."``.

Most types also derive from :class:`ValueError` (bad values) and :class:`CommError` from
:class:`RuntimeError` (a failed exchange), so ``except ValueError`` keeps working. The
:mod:`topologies` package defines ``TopologyError`` on the same base.
"""

from __future__ import annotations

__all__ = [
    "AgreementError",
    "ChocoError",
    "CommError",
    "CompressionError",
    "DataError",
    "FlatError",
    "GossipError",
    "ModelError",
    "UsageError",
]


class ChocoError(Exception):
    """Base of every choco error: a user-facing message (requirement, value received, fix)."""


class UsageError(ChocoError, ValueError):
    """Bad command-line or configuration input."""


class CompressionError(ChocoError, ValueError):
    """Bad input to a compressor, a bad spec, or a buffer that does not decode."""


class GossipError(ChocoError, ValueError):
    """Bad gossip configuration (mixing row, γ) or call order (begin/finish)."""


class CommError(ChocoError, RuntimeError):
    """A communicator that cannot be built or an exchange that failed."""


class DataError(ChocoError, ValueError):
    """A data set that cannot be found, read or partitioned as asked."""


class ModelError(ChocoError, ValueError):
    """An unknown model name or model options that do not fit the data."""


class FlatError(ChocoError, ValueError):
    """Parameters that cannot be gathered into one flat buffer."""


class AgreementError(ChocoError, ValueError):
    """Ranks that must agree (configuration, initial parameters) do not; raised on every rank.

    The message names the disagreeing ranks and the first differing field or tensor.
    """

"""The exception raised for bad model requests (defined in :mod:`choco.errors`)."""

from __future__ import annotations

from ..errors import ModelError

__all__ = ["ModelError"]

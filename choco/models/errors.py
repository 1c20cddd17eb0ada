"""The exception raised for bad model requests."""

from __future__ import annotations


class ModelError(ValueError):
    """A model name, argument or input that cannot be used (what, got, fix)."""

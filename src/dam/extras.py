"""Optional dependencies: which extra provides what, and the error that says so in one line."""

from __future__ import annotations


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""

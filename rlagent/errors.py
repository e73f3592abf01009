"""Exceptions with messages that name what is wrong."""

from __future__ import annotations

from typing import Any


class RLAgentError(Exception):
    """Base class of rlagent's own errors; the CLI prints these as one line."""


class SpecError(RLAgentError, ValueError):
    """A configuration value is missing, mistyped or out of range.

    Args:
        field: Dotted path of the offending field, e.g. ``episode.lr_range``.
        value: The value found.
        allowed: What would have been accepted.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; expected {allowed}")

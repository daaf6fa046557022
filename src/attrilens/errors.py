"""One exception type for bad input, so the CLI can print a one-line message and exit 2."""

from __future__ import annotations


class AttrilensError(ValueError):
    """Bad input or state the user can fix; the message names the problem and the fix."""


def require(condition: bool, message: str) -> None:
    """Raise AttrilensError(message) unless condition holds."""
    if not condition:
        raise AttrilensError(message)

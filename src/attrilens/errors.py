"""One exception type for bad input, so the CLI can print a one-line message and exit 2."""

from __future__ import annotations


class AttrilensError(ValueError):
    """Bad input or state the user can fix; the message names the problem and the fix."""


def require(condition: bool, message: str) -> None:
    """Raise AttrilensError(message) unless condition holds."""
    if not condition:
        raise AttrilensError(message)


def ensure_output_dir(path, option: str = "--out"):
    """Create the output directory `path` (and parents); an existing file there or no write permission is a
    one-line AttrilensError naming the option."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AttrilensError(f"{option} {path} is an existing file, not a directory. Pass a directory path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AttrilensError(f"{option} {path} cannot be created ({exc.strerror}). Pass a writable directory.") from None
    if not os.access(path, os.W_OK):
        raise AttrilensError(f"{option} {path} is not writable. Pass a writable directory.")
    return path

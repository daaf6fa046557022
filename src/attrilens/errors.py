"""One exception type for bad input, so the CLI can print a one-line message and exit 2."""

from __future__ import annotations


class AttrilensError(ValueError):
    """Bad input or state the user can fix; the message names the problem and the fix."""


def require(condition: bool, message: str) -> None:
    """Raise AttrilensError(message) unless condition holds."""
    if not condition:
        raise AttrilensError(message)


def check_output_dir(path, option: str = "--out"):
    """Refuse, before any work, an output directory `path` that could not be written: an existing file there, a
    file in its parents, or a read-only ancestor (one-line AttrilensError naming the option); creates nothing."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AttrilensError(f"{option} {path} is an existing file, not a directory. Pass a directory path.")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AttrilensError(f"{option} {path} cannot be created: {ancestor} is a file. Pass a directory path.")
    if not os.access(ancestor, os.W_OK):
        raise AttrilensError(f"{option} {path} is not writable. Pass a writable directory.")
    return path


def ensure_output_dir(path, option: str = "--out"):
    """Create the output directory `path` (and parents); an existing file there or no write permission is a
    one-line AttrilensError naming the option."""
    from pathlib import Path

    path = check_output_dir(Path(path), option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AttrilensError(f"{option} {path} cannot be created ({exc.strerror}). Pass a writable directory.") from None
    return path

"""JSONL files: read with line-numbered errors, write atomically. Every lens and the demo read through here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from attrilens.errors import AttrilensError


def iter_jsonl_lines(path: Path | str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL file; bad JSON or a non-object is an error."""
    path = Path(path)
    if not path.is_file():
        raise AttrilensError(f"File not found: {path}. Check the path (make one with `attrilens world`).")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise AttrilensError(f"{path}:{lineno} is not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}). "
                                     "Save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AttrilensError(f"{path}:{lineno} is not valid JSON ({e.msg}). "
                                     "Write one JSON object per line.") from None
            if not isinstance(row, dict):
                raise AttrilensError(f"{path}:{lineno} is not a JSON object. Write one JSON object per line.")
            yield lineno, row


def iter_jsonl(path: Path | str, require: Iterable[str] = ()) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file, raising AttrilensError on a line without a required field."""
    fields = list(require)
    for lineno, row in iter_jsonl_lines(path):
        for name in fields:
            if name not in row:
                raise AttrilensError(f'{path}:{lineno} has no "{name}" field. Give every line a "{name}".')
            if name == "text" and not isinstance(row["text"], str):
                raise AttrilensError(f'{path}:{lineno} has a "text" that is not a string. Make "text" a string.')
        yield row


def load_jsonl(path: Path | str, require: Iterable[str] = ("text",)) -> list[dict]:
    """Load a JSONL file of objects; by default every line must have a string "text" (a training corpus).

    Pass ``require=()`` for files without text (queries, facts, episodes). Raises AttrilensError for a missing
    file, an empty file, a line that is not JSON, or a line without a required field.
    """
    rows = list(iter_jsonl(path, require))
    if not rows:
        raise AttrilensError(f"{path} is empty. Give it at least one JSON line.")
    return rows


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, "\\n" line ends) through a temporary file; returns the row count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n

"""The prompts an index has been traced with: `traced.jsonl` in the index directory, what `attrilens curate` re-asks
when it is given no --questions.

`attrilens trace` appends one row per new prompt, {"prompt", "target", "response", "generated_with", "scored_as"}
(the last three only for a response the model generated): one `write` of one line to a file opened for appending,
so concurrent traces never interleave; a prompt already logged is not logged again, and the log stops growing at
`MAX_TRACED` rows. Recording is best effort — an index on a read-only disk, or inside the installed package (the
shipped demo index), is traced without it. The log is read back as untrusted input: JSONL through
`attrilens.jsonl`, a damaged file an error naming it, rows without a usable prompt skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.jsonl import iter_jsonl_lines

TRACED = "traced.jsonl"
MAX_TRACED = 200
_FORMS = ("chat template", "plain text")
_PACKAGE = Path(__file__).resolve().parents[1]  # src/attrilens: never written into


def _usable(row: dict) -> bool:
    return isinstance(row.get("prompt"), str) and bool(row["prompt"].strip()) and len(row["prompt"]) <= 100_000


def read_traced(index_dir: Path | str) -> list[dict]:
    """The logged prompts of an index, oldest first, deduplicated: {"prompt", "target", "generated_with", ...}
    (target and forms None where not logged); [] without a log. A damaged log is an AttrilensError naming it."""
    path = Path(index_dir) / TRACED
    if not path.is_file():
        return []
    try:
        lines = list(iter_jsonl_lines(path))
    except AttrilensError as exc:
        raise AttrilensError(f"The traced-prompts log {path} is damaged ({exc}). Delete it, or pass --questions "
                             "FILE.") from None
    out: dict[str, dict] = {}
    for _, row in lines:
        if not _usable(row) or row["prompt"] in out:
            continue
        out[row["prompt"]] = {
            "prompt": row["prompt"],
            "target": row["target"] if isinstance(row.get("target"), str) else None,
            "generated_with": row["generated_with"] if row.get("generated_with") in _FORMS else None,
            "scored_as": row["scored_as"] if row.get("scored_as") in _FORMS else None}
    return list(out.values())[:MAX_TRACED]


def record_trace(index_dir: Path | str, result) -> bool:
    """Append a trace's prompt (and target, and the forms of a generated response) to the index's log, unless the
    prompt is logged already or the log is full; True when a row was written. Never raises for the log itself."""
    index_dir = Path(index_dir)
    try:
        if index_dir.resolve().is_relative_to(_PACKAGE):
            return False
        path = index_dir / TRACED
        try:
            logged = read_traced(index_dir)
        except AttrilensError:
            return False  # a damaged log is left for the reader to report, not extended
        if len(logged) >= MAX_TRACED or any(r["prompt"] == result.prompt for r in logged):
            return False
        row = {"prompt": result.prompt, "target": result.target}
        if getattr(result, "generated_with", None):
            row.update(generated_with=result.generated_with, scored_as=result.scored_as)
        if not _usable(row):
            return False
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)  # one write of one line with O_APPEND: never interleaved with another trace's
        finally:
            os.close(fd)
        return True
    except OSError:
        return False

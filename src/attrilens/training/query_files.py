"""Queries read from a file for `attrilens trace --batch`: in any corpus format, one query a row.

A row's prompt is the `prompt_field` (default "prompt"), its response the `target_field` (default "target"; a row
without one is answered by the model when `generate` is on, else refused naming its line or row) and its id the
`id_field` (default "id"; positional without one). The formats are those of `attrilens.corpus_formats` — JSONL,
Parquet, a `datasets` folder, text files (one prompt a paragraph or a file) — read in batches, so a query file is
never held whole; ids must be unique, as in a corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from attrilens.errors import AttrilensError


@dataclass(frozen=True)
class QueryRow:
    """One query of a batch file: its id, prompt, response to attribute (None: the model writes it) and where it
    is in the file (for messages)."""

    id: str
    prompt: str
    target: str | None
    where: str


def iter_query_rows(path: Path | str, *, prompt_field: str = "prompt", target_field: str = "target",
                    id_field: str = "id", generate: bool = False) -> Iterator[QueryRow]:
    """The queries of the file at `path`, checked one by one: a non-empty string prompt, a string target (or none
    with `generate`), a unique id."""
    from attrilens.corpus_formats import iter_row_batches

    seen: set[str] = set()
    n = 0
    for rows in iter_row_batches(path, text_field=prompt_field, id_field=id_field, extra_fields=(target_field,)):
        for where, pos, row in rows:
            prompt, target = row.get("text"), row.get(target_field)
            if not isinstance(prompt, str) or not prompt.strip():
                raise AttrilensError(f'{where}: the prompt ("{prompt_field}") is empty or not text. Give every row '
                                     "a non-empty prompt.")
            if target is not None and not isinstance(target, str):
                raise AttrilensError(f'{where}: the target ("{target_field}") is {type(target).__name__}, not text. '
                                     "Write the response to attribute as a string.")
            if target is None and not generate:
                raise AttrilensError(f'{where} has no "{target_field}". Give every row the response to attribute '
                                     "(--target-field names its field), or pass --generate to let the model answer "
                                     "the rows without one.")
            qid = str(row.get("id", f"line-{pos}"))
            if qid in seen:
                raise AttrilensError(f"{where}: the query id {qid!r} appears twice. Give every row its own id.")
            seen.add(qid)
            n += 1
            yield QueryRow(qid, prompt, target, where)
    if n == 0:
        raise AttrilensError(f"The query file {path} has no rows. Give it at least one query.")

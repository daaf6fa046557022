"""What a curate run changes: the edit (`--remove` ids or an edit file of new texts), checked, and the corpus it
applies to, read with every field of each row so the edited corpus keeps them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.jsonl import iter_jsonl_lines


@dataclass(frozen=True)
class Edit:
    """What to change in a corpus: ids to remove and new texts by id, in the order given."""

    remove: tuple[str, ...] = ()
    replace: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """The edit as edit.jsonl rows: {"id", "remove": true} or {"id", "text"}."""
        return [{"id": i, "remove": True} for i in self.remove] + [{"id": i, "text": t} for i, t in self.replace.items()]

    def ids(self) -> list[str]:
        """Every document id the edit touches."""
        return [*self.remove, *self.replace]


def _few(ids: Sequence[str], n: int = 5) -> str:
    """At most n ids for a one-line message, with how many more there are."""
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def check_unique(ids: Sequence[str], where: str) -> None:
    """An id named twice in an edit is ambiguous: an error naming the ids."""
    seen: set[str] = set()
    twice = [i for i in ids if i in seen or seen.add(i)]
    if twice:
        raise AttrilensError(f"{where} names document id(s) {_few(sorted(set(twice)))} more than once. "
                             "Give each document one row.")


def remove_edit(ids: str | Sequence[str]) -> Edit:
    """The edit that removes documents: `--remove a,b,c` (a comma-separated string) or a list of ids."""
    parts = ids.split(",") if isinstance(ids, str) else [str(i) for i in ids]
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise AttrilensError("--remove names no document ids. Pass ids separated by commas, e.g. --remove doc-1,doc-7.")
    check_unique(parts, "--remove")
    return Edit(remove=tuple(parts))


def read_edit(path: Path | str) -> Edit:
    """An edit file: JSONL, one row per document, {"id", "remove": true} or {"id", "text": NEW TEXT}."""
    path = Path(path)
    if not path.is_file():
        raise AttrilensError(f"Edit file {str(path)!r} does not exist. Pass a JSONL file of "
                             '{"id", "remove": true} or {"id", "text"} rows (the view exports one).')
    remove: list[str] = []
    replace: dict[str, str] = {}
    order: list[str] = []
    for lineno, row in iter_jsonl_lines(path):
        where = f"{path}:{lineno}"
        extra = sorted(set(row) - {"id", "remove", "text"})
        if extra:
            raise AttrilensError(f"{where} has unknown field(s) {', '.join(extra)}. An edit row has only \"id\" and "
                                 'either "remove": true or "text".')
        if row.get("id") is None or not str(row["id"]).strip():
            raise AttrilensError(f'{where} has no "id". Name the document to change by its corpus id.')
        doc_id = str(row["id"])
        has_text, removes = "text" in row, row.get("remove", False)
        if removes not in (True, False):
            raise AttrilensError(f'{where} (id {doc_id!r}): "remove" must be true or false, got {removes!r}.')
        if removes and has_text:
            raise AttrilensError(f'{where} (id {doc_id!r}) both removes the document and gives it a new text. '
                                 'Keep one of "remove": true and "text".')
        if removes:
            remove.append(doc_id)
        elif has_text:
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise AttrilensError(f'{where} (id {doc_id!r}) has an empty "text". Give the new text, or write '
                                     '"remove": true to drop the document.')
            replace[doc_id] = row["text"]
        else:
            raise AttrilensError(f'{where} (id {doc_id!r}) changes nothing. Add "remove": true or a new "text".')
        order.append(doc_id)
    if not order:
        raise AttrilensError(f"Edit file {path} has no rows. Give it one JSON line per document to change.")
    check_unique(order, f"Edit file {path}")
    return Edit(remove=tuple(remove), replace=replace)


def apply_edit(docs: Sequence[dict], edit: Edit) -> list[dict]:
    """The corpus with the edit applied: removed documents dropped, new texts set, every other field and the order
    kept; an id the corpus lacks is an error naming it."""
    known = {str(d["id"]) for d in docs}
    unknown = [i for i in edit.ids() if i not in known]
    if unknown:
        raise AttrilensError(f"The edit names document id(s) not in the corpus: {_few(unknown)}. Use ids from the "
                             "corpus's \"id\" field (the proponents list shows them).")
    gone = set(edit.remove)
    out = [{**d, "text": edit.replace.get(str(d["id"]), d["text"])} for d in docs if str(d["id"]) not in gone]
    if not out:
        raise AttrilensError("The edit removes every document of the corpus. Keep at least one.")
    return out


def read_corpus_rows(path: Path | str, *, text_field: str = "text", id_field: str = "id") -> list[dict]:
    """A JSONL corpus with every field of each row (read_documents keeps only id and text), checked the same way; a
    row without an id gets its default "line-N" written in, so ids stay put when lines are removed. With other
    `text_field` / `id_field` names, those fields become "text" and "id". Any other format `attrilens.corpus_formats`
    reads (Parquet, a datasets folder, text files) gives rows {"id", "text"} only."""
    from attrilens.corpus_formats import corpus_format, documents_from_rows, iter_row_batches
    from attrilens.training.corpus import read_documents

    path = Path(path)
    if not path.exists():
        raise AttrilensError(f"Corpus file {str(path)!r} does not exist. Pass the JSONL corpus the adapter was "
                             "trained on (--corpus).")
    if corpus_format(path) != "jsonl":
        return read_documents(path, text_field=text_field, id_field=id_field)
    if (text_field, id_field) == ("text", "id"):
        lines = list(iter_jsonl_lines(path))
        docs = documents_from_rows((f"{path}:{n}", n, row) for n, row in lines)
    else:  # the fields checked (a missing one names those there are), then renamed
        docs = documents_from_rows(r for batch in iter_row_batches(path, text_field=text_field, id_field=id_field)
                                   for r in batch)
        lines = [(n, {**{k: v for k, v in row.items() if k not in (text_field, id_field)},
                      "id": row.get(id_field), "text": row[text_field]}) for n, row in iter_jsonl_lines(path)]
    if not docs:
        raise AttrilensError(f"Corpus file {str(path)!r} has no documents. Pass the corpus the adapter was trained on.")
    return [row if row.get("id") is not None else {**row, "id": d["id"]}
            for (_, row), d in zip(lines, docs, strict=True)]

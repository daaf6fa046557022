"""Training corpora in the formats users hold, read as documents {"id", "text"} in streaming batches.

The format is told from the path (`corpus_format`):

- ``.jsonl`` / ``.json`` / ``.ndjson``: one JSON object per line (``attrilens.jsonl``, line-numbered errors);
- ``.parquet``: read a record batch at a time (``ParquetFile.iter_batches``, never the whole table);
- a Hugging Face ``datasets`` folder (``Dataset.save_to_disk``: ``state.json`` / ``dataset_info.json``): read with
  ``datasets.load_from_disk`` (memory-mapped Arrow) in batches; a ``DatasetDict`` folder asks for one split;
- ``.txt`` / ``.md`` / ``.markdown`` / ``.rst`` / ``.text``: one document per paragraph (lines up to a blank line),
  id ``FILE:LINE`` (the file's name and the paragraph's first line);
- a folder of Parquet files, or of JSONL files (each file in sorted order), or of text files (searched
  recursively): one document per text file, its path relative to the folder as the id.

`text_field` (default "text") names the field or column holding the text and `id_field` (default "id") the one
holding the id. A text field that does not exist, or an id field other than "id" that does not exist, is an error
naming the fields that do; without an "id" field a document's id is positional: ``line-N`` (the line of a JSONL
file, the 1-based row of a Parquet file or dataset) or ``FILE:N`` in a folder of several files. Every document
is checked by `DocumentChecker`: non-empty text, an id without '#', ids
unique over the whole corpus (a duplicate is refused naming its line or row; the set of ids seen is the only
state kept, a few tens of bytes an id).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from attrilens.errors import AttrilensError

BATCH_ROWS = 1024  # documents per batch: what a reader holds at once (a Parquet record batch, a list of lines)
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
FORMATS_HELP = ("a .jsonl file, a .parquet file, a datasets save_to_disk folder, a .txt/.md file, or a folder of "
                "Parquet, JSONL or text files")
# no pre-buffering (by default pyarrow keeps the buffers of every row group read so far: memory grows with the
# file) and 1 MiB buffered column reads (a row group's column chunk is never loaded whole): bounded memory
PARQUET_STREAM = {"pre_buffer": False, "buffer_size": 1 << 20}
Rows = list[tuple[str, int, dict]]  # (where, position, row) of one batch: the position makes the default id


def corpus_format(path: Path | str) -> str:
    """"jsonl", "parquet", "datasets", "text", "parquet-dir", "jsonl-dir" or "text-dir"; an error naming the
    formats for anything else."""
    path = Path(path)
    if not path.exists():
        raise AttrilensError(f"Corpus {str(path)!r} does not exist. Pass {FORMATS_HELP}.")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise AttrilensError(f"{path} is a datasets DatasetDict (splits: {', '.join(splits) or 'none'}). Pass one "
                                 f"split's folder, e.g. {path / (splits[0] if splits else 'train')}.")
        if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
            return "datasets"
        if _files(path, (".parquet",), recursive=False):
            return "parquet-dir"
        if _files(path, JSONL_SUFFIXES, recursive=False):
            return "jsonl-dir"
        if _files(path, TEXT_SUFFIXES, recursive=True):
            return "text-dir"
        raise AttrilensError(f"The folder {path} holds no corpus files (.parquet, .jsonl or {'/'.join(TEXT_SUFFIXES)}"
                             f") and is no datasets save_to_disk folder. Pass {FORMATS_HELP}.")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise AttrilensError(f"Cannot tell the format of {str(path)!r} from its name. Pass {FORMATS_HELP}.")


class DocumentChecker:
    """Checks rows one at a time as every corpus reader checks them: non-empty text, an id (default "line-N")
    without '#' (it separates block numbers) and unique over all rows seen (a set of the ids)."""

    def __init__(self, text_field: str = "text"):
        self.seen: set[str] = set()
        self.text_field = text_field

    def __call__(self, where: str, lineno: int, row: dict) -> dict:
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise AttrilensError(f'{where} has no text. Give every document a non-empty "{self.text_field}" string.')
        doc_id = str(row["id"]) if row.get("id") is not None else f"line-{lineno}"
        if "#" in doc_id:
            raise AttrilensError(f"{where}: document id {doc_id!r} contains '#', which separates block numbers. "
                                 "Rename the document.")
        if doc_id in self.seen:
            raise AttrilensError(f"{where}: document id {doc_id!r} occurs twice. Give every document a unique id.")
        self.seen.add(doc_id)
        return {"id": doc_id, "text": row["text"]}


def documents_from_rows(rows: Iterable[tuple[str, int, dict]]) -> list[dict]:
    """Documents {"id", "text"} from (where, line number, row) triples, checked by `DocumentChecker`."""
    check = DocumentChecker()
    return [check(where, lineno, row) for where, lineno, row in rows]


def iter_document_batches(path: Path | str, *, text_field: str = "text", id_field: str = "id",
                          batch_rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Documents {"id", "text"} of the corpus at `path`, checked, in batches of at most `batch_rows`."""
    path = Path(path)
    check = DocumentChecker(text_field)
    n = 0
    for rows in iter_row_batches(path, text_field=text_field, id_field=id_field, batch_rows=batch_rows):
        docs = [check(where, pos, row) for where, pos, row in rows]
        n += len(docs)
        if docs:
            yield docs
    if n == 0:
        raise AttrilensError(f"Corpus file {str(path)!r} has no documents. Give it at least one document.")


def iter_documents(path: Path | str, **options) -> Iterator[dict]:
    """Documents {"id", "text"} of the corpus at `path`, one at a time (`iter_document_batches`' options)."""
    for batch in iter_document_batches(path, **options):
        yield from batch


def iter_row_batches(path: Path | str, *, text_field: str = "text", id_field: str = "id",
                     batch_rows: int = BATCH_ROWS, extra_fields: tuple[str, ...] = ()) -> Iterator[Rows]:
    """Raw rows {"id"?, "text"} (the two fields under their canonical names) with where they are, in batches; a
    missing field is an error naming the fields there are. `extra_fields` are passed through under their own names
    where a row has them (a query's "target"; text files have none). Nothing is checked beyond that."""
    if batch_rows < 1:
        raise AttrilensError(f"batch_rows must be positive, got {batch_rows}.")
    for name, value in (("text_field", text_field), ("id_field", id_field)):
        if not isinstance(value, str) or not value:
            raise AttrilensError(f"{name} must be a non-empty field name, got {value!r}.")
    path = Path(path)
    kind = corpus_format(path)
    fields = (text_field, id_field, tuple(extra_fields))
    if kind == "jsonl":
        yield from _jsonl(path, *fields, batch_rows, None)
    elif kind == "jsonl-dir":
        for f in _files(path, JSONL_SUFFIXES, recursive=False):
            yield from _jsonl(f, *fields, batch_rows, f.relative_to(path).as_posix())
    elif kind == "parquet":
        yield from _parquet(path, *fields, batch_rows, None)
    elif kind == "parquet-dir":
        for f in _files(path, (".parquet",), recursive=False):
            yield from _parquet(f, *fields, batch_rows, f.relative_to(path).as_posix())
    elif kind == "datasets":
        yield from _datasets(path, *fields, batch_rows)
    elif kind == "text":
        yield from _paragraphs(path, batch_rows)
    else:
        yield from _text_files(path, batch_rows)


# ---------------------------------------------------------------------- readers
def _files(folder: Path, suffixes: tuple[str, ...], *, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _fields_help(path: Path | str, names) -> str:
    return f"{path} has the fields: {', '.join(map(str, names)) or 'none'}"


def _missing(path: Path | str, field: str, option: str, names) -> AttrilensError:
    return AttrilensError(f'The corpus field "{field}" does not exist: {_fields_help(path, names)}. Pass {option} '
                          "with one of them.")


def _canonical(row: dict, text_field: str, id_field: str, extra: tuple[str, ...] = ()) -> dict:
    out = {"text": row.get(text_field)}
    if row.get(id_field) is not None:
        out["id"] = row[id_field]
    out.update({f: row[f] for f in extra if row.get(f) is not None})
    return out


def _jsonl(path: Path, text_field: str, id_field: str, extra: tuple[str, ...], batch_rows: int,
           rel: str | None) -> Iterator[Rows]:
    from attrilens.jsonl import iter_jsonl_lines

    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"["):
        raise AttrilensError(f"{path} is a JSON array, not JSON lines. Write one JSON object per line (JSONL).")
    batch: Rows = []
    for lineno, row in iter_jsonl_lines(path):
        where = f"{path}:{lineno}"
        if text_field not in row:
            raise AttrilensError(f'{where} has no "{text_field}" field ({_fields_help("it", row)}). Pass '
                                 "--text-field with the field that holds the text.")
        if id_field != "id" and id_field not in row:
            raise AttrilensError(f'{where} has no "{id_field}" field ({_fields_help("it", row)}). Pass '
                                 "--id-field with the field that holds the id.")
        doc = _canonical(row, text_field, id_field, extra)
        if rel is not None and "id" not in doc:
            doc["id"] = f"{rel}:{lineno}"
        batch.append((where, lineno, doc))
        if len(batch) >= batch_rows:
            yield batch
            batch = []
    if batch:
        yield batch


def _columns(path, names: list[str], text_field: str, id_field: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The columns to read: the text's, the id's when there is one (an id field other than "id" must exist) and
    those of `extra` there are."""
    if text_field not in names:
        raise _missing(path, text_field, "--text-field", names)
    if id_field not in names and id_field != "id":
        raise _missing(path, id_field, "--id-field", names)
    cols = [text_field] + ([id_field] if id_field in names and id_field != text_field else [])
    return cols + [f for f in extra if f in names and f not in cols]


def _parquet(path: Path, text_field: str, id_field: str, extra: tuple[str, ...], batch_rows: int,
             rel: str | None) -> Iterator[Rows]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, **PARQUET_STREAM)
    except (OSError, pyarrow.ArrowException) as exc:
        raise AttrilensError(f"{path} is not a readable Parquet file ({type(exc).__name__}: {str(exc)[:120]}).") from None
    columns = _columns(path, pf.schema_arrow.names, text_field, id_field, extra)
    k = 0
    try:
        for rb in pf.iter_batches(batch_size=batch_rows, columns=columns):
            cols = {c: rb.column(c).to_pylist() for c in columns}
            rows: Rows = []
            for j in range(rb.num_rows):
                k += 1
                doc = _canonical({c: v[j] for c, v in cols.items()}, text_field, id_field, extra)
                if "id" not in doc:
                    doc["id"] = f"line-{k}" if rel is None else f"{rel}:{k}"
                rows.append((f"{path}: row {k}", k, doc))
            yield rows
    except (OSError, pyarrow.ArrowException) as exc:
        raise AttrilensError(f"{path}: row {k + 1} onwards cannot be read ({type(exc).__name__}: {str(exc)[:120]}). "
                             "The file is damaged: write it again.") from None


def _datasets(path: Path, text_field: str, id_field: str, extra: tuple[str, ...], batch_rows: int) -> Iterator[Rows]:
    try:
        import datasets
    except ImportError:
        raise AttrilensError(f"{path} is a datasets folder, which needs the `datasets` package. Install it: "
                             "pip install datasets.") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise AttrilensError(f"{path} cannot be read as a datasets save_to_disk folder ({type(exc).__name__}: "
                             f"{str(exc)[:120]}).") from None
    if isinstance(ds, datasets.DatasetDict):
        raise AttrilensError(f"{path} is a datasets DatasetDict (splits: {', '.join(ds)}). Pass one split's folder.")
    columns = _columns(path, ds.column_names, text_field, id_field, extra)
    k = 0
    for b in ds.select_columns(columns).iter(batch_size=batch_rows):
        rows: Rows = []
        for j in range(len(b[text_field])):
            k += 1
            doc = _canonical({c: b[c][j] for c in columns}, text_field, id_field, extra)
            doc.setdefault("id", f"line-{k}")
            rows.append((f"{path}: row {k}", k, doc))
        yield rows


def _read_text(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise AttrilensError(f"{path}:{lineno} is not UTF-8 (byte {raw[e.start]:#04x} at column "
                                     f"{e.start + 1}). Save the file as UTF-8.") from None


def _paragraphs(path: Path, batch_rows: int) -> Iterator[Rows]:
    """One document per paragraph (lines up to a blank line), id FILE:LINE of its first line."""
    batch: Rows = []
    lines: list[str] = []
    first = 0

    def flush() -> None:
        if lines:
            text = "".join(lines).strip("\n")
            batch.append((f"{path}:{first}", first, {"id": f"{path.name}:{first}", "text": text}))

    for lineno, line in _read_text(path):
        if line.strip():
            if not lines:
                first = lineno
            lines.append(line)
            continue
        flush()
        lines = []
        if len(batch) >= batch_rows:
            yield batch
            batch = []
    flush()
    if batch:
        yield batch


def _text_files(folder: Path, batch_rows: int) -> Iterator[Rows]:
    """One document per text file under `folder` (sorted, recursive), its relative path as the id. A file is read
    whole: text files are documents, not corpora."""
    batch: Rows = []
    for k, f in enumerate(_files(folder, TEXT_SUFFIXES, recursive=True), 1):
        text = "".join(line for _, line in _read_text(f))
        batch.append((str(f), k, {"id": f.relative_to(folder).as_posix(), "text": text}))
        if len(batch) >= batch_rows:
            yield batch
            batch = []
    if batch:
        yield batch

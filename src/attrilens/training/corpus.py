"""Training corpus: documents → fixed-length token blocks with stable ids ("doc-00042#0"), stored in Parquet.

A document is tokenised as the trainer does (no special tokens, eos appended) and cut into blocks of at most
`block_len` tokens; block k of document `doc` has id ``f"{doc}#{k}"``. The corpus fingerprint hashes the
documents (ids and texts) and the block length, so an index can tell when it is queried with another corpus.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from attrilens.corpus_formats import iter_document_batches, iter_documents
from attrilens.errors import AttrilensError


@dataclass
class Corpus:
    """Blocks of a tokenised corpus: parallel lists of doc ids, block numbers, texts and token ids."""

    docs: list[str]
    blocks: list[int]
    texts: list[str]
    tokens: list[list[int]]
    block_len: int
    fingerprint: str

    def __len__(self) -> int:
        return len(self.docs)

    def block_id(self, i: int) -> str:
        return f"{self.docs[i]}#{self.blocks[i]}"

    def neighbours(self, i: int) -> list[str]:
        """Texts of the blocks just before and after block i in the same document (those that exist)."""
        out = []
        for j in (i - 1, i + 1):
            if 0 <= j < len(self) and self.docs[j] == self.docs[i]:
                out.append(self.texts[j])
        return out

    def subset(self, rows: Sequence[int]) -> Corpus:
        """A corpus of the given rows (fingerprint recomputed from their documents' ids and texts)."""
        rows = list(rows)
        docs = [self.docs[r] for r in rows]
        texts = [self.texts[r] for r in rows]
        fp = _fingerprint([f"{d}#{b}" for d, b in zip(docs, [self.blocks[r] for r in rows], strict=True)], texts,
                          self.block_len)
        return Corpus(docs, [self.blocks[r] for r in rows], texts, [self.tokens[r] for r in rows], self.block_len, fp)

    def to_parquet(self, path: Path) -> None:
        """Write ids, block numbers, texts and token ids (fingerprint and block length in the metadata)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"doc": self.docs, "block": self.blocks, "text": self.texts,
                          "tokens": pa.array(self.tokens, type=pa.list_(pa.int32()))})
        table = table.replace_schema_metadata({"fingerprint": self.fingerprint, "block_len": str(self.block_len)})
        tmp = Path(str(path) + ".tmp")
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)  # row groups: what CorpusFile reads at once
        tmp.replace(path)

    @classmethod
    def from_parquet(cls, path: Path) -> Corpus:
        """The blocks an index was built on; a missing, foreign or damaged file is an error naming it."""
        import pyarrow
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            d = table.to_pydict()
            return cls(d["doc"], d["block"], d["text"], d["tokens"], int(meta["block_len"]), meta["fingerprint"])
        except (OSError, pyarrow.ArrowException, KeyError, ValueError, UnicodeDecodeError) as exc:
            raise AttrilensError(f"{path} is not the corpus file of an attrilens index ({type(exc).__name__}). The "
                                 "index is damaged: rebuild it.") from None


def _fingerprint(ids: Sequence[str], texts: Sequence[str], block_len: int) -> str:
    h = hashlib.sha256(f"block_len={block_len}\n".encode())
    for i, t in zip(ids, texts, strict=True):
        h.update(json.dumps([i, t], ensure_ascii=False).encode())
    return h.hexdigest()


def read_documents(path: Path, *, text_field: str = "text", id_field: str = "id") -> list[dict]:
    """Documents {"id", "text"} of a corpus in any format `attrilens.corpus_formats` reads (JSONL, Parquet, a
    `datasets` folder, text files), as a list; a document without non-empty text is an error naming its line."""
    path = Path(path)
    if not path.exists():
        raise AttrilensError(f"Corpus file {str(path)!r} does not exist. Pass a JSONL file of {{\"id\", \"text\"}} "
                             "lines (or a Parquet file, a datasets folder, text files).")
    return list(iter_documents(path, text_field=text_field, id_field=id_field))


def document_batches(documents: Sequence[dict] | Path | str, *, text_field: str = "text", id_field: str = "id",
                     batch_rows: int = 1024) -> Iterator[list[dict]]:
    """Documents in batches: of a corpus path (any format, checked as `read_documents`), or of a list as
    `make_corpus` takes it (ids default "doc-K", each with a non-empty text)."""
    if isinstance(documents, (str, Path)):
        yield from iter_document_batches(Path(documents), text_field=text_field, id_field=id_field,
                                         batch_rows=batch_rows)
        return
    if not documents:
        raise AttrilensError("The corpus is empty. Pass at least one document.")
    for a in range(0, len(documents), batch_rows):
        batch = []
        for k in range(a, min(a + batch_rows, len(documents))):
            d = documents[k]
            if not isinstance(d.get("text"), str) or not d["text"].strip():
                raise AttrilensError(f"Document {d.get('id', k)!r} has no text. Give every document a non-empty text.")
            batch.append({"id": str(d.get("id", f"doc-{k}")), "text": d["text"]})
        yield batch


def documents_fingerprint(batches: Iterable[Sequence[dict]], block_len: int) -> tuple[str, int]:
    """The corpus fingerprint `make_corpus` gives these documents (no tokenising) and how many there are."""
    h = hashlib.sha256(f"block_len={block_len}\n".encode())
    n = 0
    for batch in batches:
        for d in batch:
            h.update(json.dumps([d["id"], d["text"]], ensure_ascii=False).encode())
        n += len(batch)
    return h.hexdigest(), n


def _cut(ids: Sequence[str], texts: Sequence[str], tokenizer, block_len: int):
    """Tokenise documents (no special tokens, eos appended) and cut them into blocks: (docs, blocks, texts, tokens)."""
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out_docs, out_blocks, out_texts, out_tokens = [], [], [], []
    for doc_id, ids_ in zip(ids, enc, strict=True):
        toks = list(ids_) + ([eos] if eos is not None else [])
        for b, start in enumerate(range(0, len(toks), block_len)):
            chunk = toks[start : start + block_len]
            if len(chunk) < 2 and b > 0:  # a lone trailing token has no next-token loss inside its block: drop it
                continue
            out_docs.append(doc_id)
            out_blocks.append(b)
            out_texts.append(tokenizer.decode(chunk, skip_special_tokens=True, clean_up_tokenization_spaces=False))
            out_tokens.append(chunk)
    return out_docs, out_blocks, out_texts, out_tokens


ROW_GROUP_ROWS = 1024  # blocks per Parquet row group of a streamed corpus.parquet (what CorpusFile reads at once)


def write_corpus(batches: Iterable[Sequence[dict]], tokenizer, path: Path, *, block_len: int, fingerprint: str,
                 n_documents: int, progress: bool = False) -> int:
    """Tokenise document batches into blocks and write them to `path` (corpus.parquet, the layout `to_parquet`
    writes) a row group at a time, through a temporary file: memory holds one batch, never the corpus. The
    documents must be the ones `fingerprint` (`documents_fingerprint`) was computed on. Returns the block count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    schema = pa.schema([("doc", pa.string()), ("block", pa.int64()), ("text", pa.string()),
                        ("tokens", pa.list_(pa.int32()))],
                       metadata={"fingerprint": fingerprint, "block_len": str(block_len),
                                 "n_documents": str(n_documents)})
    h = hashlib.sha256(f"block_len={block_len}\n".encode())
    tmp = Path(str(path) + ".tmp")
    n_blocks = 0
    bar = tqdm(total=n_documents, desc="tokenise corpus", file=sys.stderr, disable=not progress, mininterval=1.0,
               dynamic_ncols=True)
    buf: list[list] = [[], [], [], []]

    def flush(writer) -> None:
        writer.write_table(pa.table({"doc": buf[0], "block": buf[1], "text": buf[2],
                                     "tokens": pa.array(buf[3], type=pa.list_(pa.int32()))}, schema=schema),
                           row_group_size=ROW_GROUP_ROWS)
        for col in buf:
            col.clear()

    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in batches:
                ids, texts = [d["id"] for d in batch], [d["text"] for d in batch]
                for i, t in zip(ids, texts, strict=True):
                    h.update(json.dumps([i, t], ensure_ascii=False).encode())
                for col, part in zip(buf, _cut(ids, texts, tokenizer, block_len), strict=True):
                    col.extend(part)
                while len(buf[0]) >= ROW_GROUP_ROWS:  # whole row groups out, the rest stays for the next batch
                    rest = [col[ROW_GROUP_ROWS:] for col in buf]
                    for col in buf:
                        del col[ROW_GROUP_ROWS:]
                    n_blocks += len(buf[0])
                    flush(writer)
                    for col, r in zip(buf, rest, strict=True):
                        col.extend(r)
                bar.update(len(batch))
            if buf[0] or n_blocks == 0:
                n_blocks += len(buf[0])
                flush(writer)
        bar.close()
        if h.hexdigest() != fingerprint:
            raise AttrilensError("The corpus changed while it was being read (its fingerprint differs between two "
                                 "passes). Do not edit it during a build, then build again.")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n_blocks


class CorpusFile:
    """The blocks of a corpus.parquet read on demand, a row group at a time (the last one read is cached per
    column): what a build over a corpus larger than memory featurises from. Read-only; the same fields as
    `Corpus` (docs, blocks, texts, tokens as lazy sequences, block_id, neighbours); `load()` reads it all."""

    def __init__(self, path: Path):
        import pyarrow
        import pyarrow.parquet as pq

        self.path = Path(path)
        try:
            self._file = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=1 << 20)  # bounded memory
            meta = {k.decode(): v.decode() for k, v in (self._file.schema_arrow.metadata or {}).items()}
            self.block_len, self.fingerprint = int(meta["block_len"]), meta["fingerprint"]
            md = self._file.metadata
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        except (OSError, pyarrow.ArrowException, KeyError, ValueError, UnicodeDecodeError) as exc:
            raise AttrilensError(f"{path} is not the corpus file of an attrilens index ({type(exc).__name__}). The "
                                 "index is damaged: rebuild it.") from None
        self._starts = [0]
        for s in sizes:
            self._starts.append(self._starts[-1] + s)
        self._n_documents = int(meta["n_documents"]) if "n_documents" in meta else None
        self._cache: dict[str, tuple[int, list]] = {}
        self.docs, self.blocks, self.texts, self.tokens = (_Column(self, c) for c in ("doc", "block", "text", "tokens"))

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def n_documents(self) -> int:
        """Documents in the corpus (recorded at write time; counted from the doc column for an older file)."""
        if self._n_documents is None:
            self._n_documents = len({d for g in range(len(self._starts) - 1) for d in self._group("doc", g)})
        return self._n_documents

    def _group(self, column: str, g: int) -> list:
        import pyarrow

        hit = self._cache.get(column)
        if hit is None or hit[0] != g:
            try:
                values = self._file.read_row_group(g, columns=[column]).column(0).to_pylist()
            except (OSError, pyarrow.ArrowException) as exc:
                raise AttrilensError(f"{self.path} is damaged (row group {g}: {type(exc).__name__}). Rebuild the "
                                     "index.") from None
            hit = self._cache[column] = (g, values)
        return hit[1]

    def value(self, column: str, i: int):
        """Row i of a column ("doc", "block", "text" or "tokens")."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        g = bisect.bisect_right(self._starts, i) - 1
        return self._group(column, g)[i - self._starts[g]]

    def block_id(self, i: int) -> str:
        return f"{self.docs[i]}#{self.blocks[i]}"

    def neighbours(self, i: int) -> list[str]:
        """Texts of the blocks just before and after block i in the same document (those that exist)."""
        return [self.texts[j] for j in (i - 1, i + 1) if 0 <= j < len(self) and self.docs[j] == self.docs[i]]

    def load(self) -> Corpus:
        """The whole corpus in memory."""
        return Corpus.from_parquet(self.path)


class _Column(Sequence):
    def __init__(self, owner: CorpusFile, column: str):
        self._owner, self._column = owner, column

    def __len__(self) -> int:
        return len(self._owner)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._owner.value(self._column, j) for j in range(*i.indices(len(self)))]
        return self._owner.value(self._column, i + len(self) if i < 0 else i)


def make_corpus(documents: Sequence[dict] | Path | str, tokenizer, *, block_len: int = 128) -> Corpus:
    """Tokenise documents (as the trainer does: no special tokens, eos appended) into blocks of ≤ block_len tokens."""
    if block_len < 2:
        raise AttrilensError(f"block_len must be at least 2 tokens, got {block_len}.")
    docs = [d for batch in document_batches(documents) for d in batch]
    ids = [d["id"] for d in docs]
    texts = [d["text"] for d in docs]
    return Corpus(*_cut(ids, texts, tokenizer, block_len), block_len, _fingerprint(ids, texts, block_len))

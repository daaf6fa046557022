"""Training corpus: documents → fixed-length token blocks with stable ids ("doc-00042#0"), stored in Parquet.

A document is tokenised as the trainer does (no special tokens, eos appended) and cut into blocks of at most
`block_len` tokens; block k of document `doc` has id ``f"{doc}#{k}"``. The corpus fingerprint hashes the
documents (ids and texts) and the block length, so an index can tell when it is queried with another corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.jsonl import iter_jsonl_lines


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
        pq.write_table(table, tmp)
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


def read_documents(path: Path) -> list[dict]:
    """Documents {"id", "text"} of a JSONL corpus; a line without non-empty text is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise AttrilensError(f"Corpus file {str(path)!r} does not exist. Pass a JSONL file of {{\"id\", \"text\"}} lines.")
    docs = documents_from_rows((f"{path}:{lineno}", lineno, row) for lineno, row in iter_jsonl_lines(path))
    if not docs:
        raise AttrilensError(f"Corpus file {str(path)!r} has no documents. Give it at least one JSON line.")
    return docs


def documents_from_rows(rows: Iterable[tuple[str, int, dict]]) -> list[dict]:
    """Documents {"id", "text"} from (where, line number, row) triples, checked as every corpus reader checks them:
    non-empty text, an id (default "line-N") without '#' (it separates block numbers) and unique."""
    docs = []
    seen: set[str] = set()
    for where, lineno, row in rows:
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise AttrilensError(f'{where} has no text. Give every document a non-empty "text" string.')
        doc_id = str(row["id"]) if row.get("id") is not None else f"line-{lineno}"
        if "#" in doc_id:
            raise AttrilensError(f"{where}: document id {doc_id!r} contains '#', which separates block numbers. "
                                 "Rename the document.")
        if doc_id in seen:
            raise AttrilensError(f"{where}: document id {doc_id!r} occurs twice. Give every document a unique id.")
        seen.add(doc_id)
        docs.append({"id": doc_id, "text": row["text"]})
    return docs


def make_corpus(documents: Sequence[dict] | Path | str, tokenizer, *, block_len: int = 128) -> Corpus:
    """Tokenise documents (as the trainer does: no special tokens, eos appended) into blocks of ≤ block_len tokens."""
    if block_len < 2:
        raise AttrilensError(f"block_len must be at least 2 tokens, got {block_len}.")
    if isinstance(documents, (str, Path)):
        documents = read_documents(Path(documents))
    if not documents:
        raise AttrilensError("The corpus is empty. Pass at least one document.")
    for k, d in enumerate(documents):
        if not isinstance(d.get("text"), str) or not d["text"].strip():
            raise AttrilensError(f"Document {d.get('id', k)!r} has no text. Give every document a non-empty text.")
    ids = [str(d.get("id", f"doc-{k}")) for k, d in enumerate(documents)]
    texts = [d["text"] for d in documents]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
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
    return Corpus(out_docs, out_blocks, out_texts, out_tokens, block_len, _fingerprint(ids, texts, block_len))

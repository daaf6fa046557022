"""`VerbatimIndex`: open a verbatim index and trace a response to the training documents that contain its spans.

How a trace runs (OLMoTrace, Liu et al. 2025, on the infini-gram engine):

1. The response is tokenised as the corpus was (`lm.encode_response`: no chat template, no special tokens).
2. For every response position l, infini-gram's `creativity` gives the longest prefix of response[l:] that occurs
   in the corpus (a suffix-array search; the document separator never matches, so no span crosses a document
   boundary). infini-gram 2.6 skips the suffix of rank 0 when a query sorts before every suffix of the corpus;
   that one case is recomputed here, so the lengths are exact.
3. Maximal spans: those of at least `min_len` tokens that no span starting earlier contains.
4. Rarity filter: OLMoTrace keeps the K = ceil(0.05 × response tokens) spans of lowest span unigram probability
   (the product of the tokens' corpus unigram probabilities); here they are taken greedily, rarest first,
   skipping any span that overlaps a rarer kept one, so the kept spans never overlap and each one is a string
   of the corpus with an exact count (OLMoTrace merges overlapping spans only for display). `max_spans`
   overrides K. The result reports the mean per-token log probability (comparable across span lengths).
5. Documents: each kept span's occurrences (`find`: a suffix-array range) are read from the suffix array,
   evenly spaced over the range when there are more than `CANDIDATES` (min. 10 × top_k), and mapped to their
   documents by the document offset table. All candidate documents of all spans are ranked by BM25 (bm25s, as
   the `bm25` method) against prompt + response, the collection being the retrieved documents themselves (as
   OLMoTrace does), and each span keeps its top_k. Every occurrence of the span in a kept document is returned
   as character offsets into the document text.

Spans are token-level (no word-boundary or sentence-delimiter rule): a planted span is found exactly as planted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.training.queries import check_query, generate_answer
from attrilens.training.store import read_manifest, sha256_file
from attrilens.training.verbatim.build import (
    DOCUMENT_LINES,
    DOCUMENTS,
    ENGINE_DIR,
    OFFSETS,
    SEPARATOR,
    STAGE_FILES,
    TABLE,
    TOKEN_MAP,
    TOKENS,
    UNIGRAM,
    infini_gram_dir,
    tokenizer_fingerprint,
    write_verbatim_index,
)
from attrilens.training.verbatim.offsets import char_spans
from attrilens.training.verbatim.result import VerbatimDocument, VerbatimResult, VerbatimSpan
from attrilens.training.verbatim.spans import maximal_spans, select_spans, span_budget

CANDIDATES = 100  # occurrences read per span (at least 10 × top_k); evenly spaced over the suffix-array range


class VerbatimIndex:
    """An opened verbatim index: the infini-gram engine, memory-mapped token and suffix-array files, the document
    table; `trace` finds the response's spans that occur word for word in the corpus and their documents."""

    def __init__(self, path: Path, manifest: dict, lm: LM):
        from infini_gram.engine import InfiniGramEngine

        self.path, self.manifest, self.lm = Path(path), manifest, lm
        self.width, self.dtype = 2, np.uint16
        self.tokens = np.memmap(self.path / TOKENS, dtype=self.dtype, mode="r")
        self.table = np.memmap(self.path / TABLE, dtype=np.uint8, mode="r")
        self.ptr_bytes = len(self.table) // len(self.tokens)
        self.doc_offsets = np.fromfile(self.path / OFFSETS, dtype=np.uint64).astype(np.int64)
        self.doc_lines = np.load(self.path / DOCUMENT_LINES, allow_pickle=False)
        self.unigram = np.load(self.path / UNIGRAM, allow_pickle=False)
        self.n_tokens = int(manifest["corpus"]["n_tokens"])
        self._logp = np.log(np.maximum(self.unigram, 1)) - np.log(max(self.n_tokens, 1))
        self.from_engine = np.load(self.path / TOKEN_MAP, allow_pickle=False)  # stored id → tokenizer id
        self.to_engine = np.full(len(self.unigram), len(self.from_engine), dtype=np.int64)  # unused → no match
        self.to_engine[self.from_engine] = np.arange(len(self.from_engine))
        self.engine = InfiniGramEngine(index_dir=str(self.path / ENGINE_DIR), eos_token_id=0,
                                       vocab_size=min(len(self.from_engine) + 1, SEPARATOR), version=4,
                                       token_dtype="u16")
        first = self._pointers(np.array([0]))[0] // self.width  # the smallest suffix (see `_ends`)
        self._first = np.asarray(self.tokens[first:first + 4096], dtype=np.int64)

    @property
    def method_name(self) -> str:
        return "verbatim"

    def __len__(self) -> int:
        """Number of documents."""
        return len(self.doc_offsets)

    @classmethod
    def open(cls, path: Path | str, lm: LM, *, verify: bool | None = None) -> VerbatimIndex:
        """Open a verbatim index for tracing with `lm`, whose tokenizer must be the one it was built with; every
        file's size is checked, and its sha256 too with `verify=True` (CLI `--verify`)."""
        infini_gram_dir()
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("method") != "verbatim":
            raise AttrilensError(f"{path} is a {manifest.get('method')} index, not a verbatim one. Open it with "
                                 "TrainingIndex.open (or build a verbatim index with --method verbatim).")
        try:
            tok, files = manifest["tokenizer"], manifest["files"]
            manifest["corpus"]["n_tokens"]
        except (KeyError, TypeError) as exc:
            raise AttrilensError(f"{path / 'manifest.json'} lacks the field {exc} of a verbatim index. The index is "
                                 "damaged: rebuild it.") from None
        fp = tokenizer_fingerprint(lm.tokenizer)
        if tok.get("fingerprint") != fp:
            raise AttrilensError(f"The verbatim index in {path} was built with another tokenizer ({tok.get('class')}, "
                                 f"{tok.get('vocab')} entries, fingerprint {str(tok.get('fingerprint'))[:12]}) than "
                                 f"{lm.name}'s ({len(lm.tokenizer)} entries, {fp[:12]}). Trace with the model it "
                                 "was built with, or rebuild the index.")
        expected = {rel for stage in STAGE_FILES.values() for rel in stage}
        for rel in sorted(expected):
            p, rec = path / rel, files.get(rel)
            if rec is None or not p.is_file():
                raise AttrilensError(f"{p} is missing from the verbatim index. Rebuild the index.")
            if p.stat().st_size != rec["bytes"]:
                raise AttrilensError(f"{p} is {p.stat().st_size} bytes, the manifest says {rec['bytes']} (truncated "
                                     "or changed). Rebuild the index.")
            if verify and sha256_file(p) != rec["sha256"]:
                raise AttrilensError(f"{p} does not match the checksum in its manifest: it changed after the build. "
                                     "Rebuild the index.")
        extra = sorted(p.name for p in (path / ENGINE_DIR).iterdir() if f"{ENGINE_DIR}/{p.name}" not in expected)
        if extra:  # the engine reads every file of its folder whose name contains "table", "offset", ...
            raise AttrilensError(f"{path / ENGINE_DIR} holds files the build did not write ({', '.join(extra)}). "
                                 "Remove them, or rebuild the index.")
        ds, table = files[TOKENS]["bytes"], files[TABLE]["bytes"]
        if int(tok.get("token_bytes", 0)) != 2 or ds % 2 or table % max(ds // 2, 1) or files[OFFSETS]["bytes"] % 8:
            raise AttrilensError(f"The engine files of {path} have inconsistent sizes. Rebuild the index.")
        return cls(path, manifest, lm)

    # ------------------------------------------------------------------ engine helpers
    def _pointers(self, ranks: np.ndarray) -> np.ndarray:
        """Byte offsets into tokenized.0 of the suffixes of the given suffix-array ranks (little-endian entries)."""
        b = self.ptr_bytes
        cols = np.asarray(self.table[(ranks[:, None] * b + np.arange(b)).ravel()], dtype=np.int64).reshape(-1, b)
        return (cols << (8 * np.arange(b, dtype=np.int64))).sum(axis=1)

    def _engine_ids(self, ids: list[int]) -> list[int]:
        """Tokenizer ids as stored ids (a token the corpus never uses maps to an id that matches nothing)."""
        return self.to_engine[np.asarray(ids, dtype=np.int64)].tolist()

    def _ends(self, ids: list[int]) -> list[int]:
        """ends[l]: the end of the longest prefix of ids[l:] (stored ids) in the corpus (engine `creativity`).

        infini-gram 2.6 compares a query with the suffixes of ranks start-1 and start around its insertion rank,
        but skips both when start is 0 (an unsigned underflow): a query that sorts before every suffix never sees
        rank 0. Such a query's longest match is its common prefix with the rank-0 suffix, recomputed here.
        """
        res = self.engine.creativity(input_ids=ids)
        if "error" in res:
            raise AttrilensError(f"The infini-gram engine refused the response tokens ({res['error']}).")
        ends = list(res["rs"])
        first = self._first
        q = np.asarray(ids, dtype=self.dtype)
        for left in range(len(ids)):
            rest = q[left:]
            if rest.tobytes() < first[: len(rest)].astype(self.dtype).tobytes():
                m = min(len(rest), len(first))
                diff = np.nonzero(rest[:m].astype(np.int64) != first[:m])[0]
                lcp = int(diff[0]) if diff.size else m
                ends[left] = max(ends[left], left + lcp)
        return ends

    def _document(self, d: int) -> tuple[str, str]:
        """(id, text) of document d, read from documents.jsonl at its recorded line offset."""
        a, b = int(self.doc_lines[d]), int(self.doc_lines[d + 1])
        with open(self.path / DOCUMENTS, "rb") as f:
            f.seek(a)
            row = json.loads(f.read(b - a))
        return str(row["id"]), str(row["text"])

    def _document_tokens(self, d: int) -> np.ndarray:
        start = int(self.doc_offsets[d]) // self.width + 1  # after the separator
        end = int(self.doc_offsets[d + 1]) // self.width if d + 1 < len(self.doc_offsets) else len(self.tokens)
        return np.asarray(self.tokens[start:end])

    def _occurrence_documents(self, span: list[int], cap: int) -> tuple[int, list[int]]:
        """(count, documents in corpus order) of a span: documents of up to `cap` occurrences, evenly spaced over
        the span's suffix-array range."""
        found = self.engine.find(input_ids=span)
        if "error" in found:
            raise AttrilensError(f"The infini-gram engine refused the span tokens ({found['error']}).")
        lo, hi = found["segment_by_shard"][0]
        if hi <= lo:
            return 0, []
        ranks = np.arange(lo, hi) if hi - lo <= cap else np.unique(np.linspace(lo, hi - 1, cap).round().astype(np.int64))
        ptrs = np.sort(self._pointers(ranks))
        docs = np.searchsorted(self.doc_offsets, ptrs, side="right") - 1
        return int(found["cnt"]), list(dict.fromkeys(docs.tolist()))

    # ------------------------------------------------------------------ trace
    def trace(self, prompt: str, target: str | None = None, generate: bool = False, *, min_len: int = 8,
              top_k: int = 10, max_new_tokens: int = 24, max_spans: int | None = None,
              chat_template: bool | None = None) -> VerbatimResult:
        """The response's maximal spans (≥ min_len tokens) that occur verbatim in the corpus, the rarest
        ceil(0.05 × length) of them (or `max_spans`), each with its count and top_k documents by BM25."""
        t0 = time.perf_counter()
        cost = Cost()
        check_query(prompt, target, generate, top_k)
        if min_len < 1:
            raise AttrilensError(f"min_len must be at least 1 token, got {min_len}.")
        if max_spans is not None and max_spans < 1:
            raise AttrilensError(f"max_spans must be at least 1, got {max_spans}.")
        if generate:  # written the way the model answers (`queries.answers_in_chat`, or `chat_template`)
            target = generate_answer(self.lm, prompt, max_new_tokens, chat_template).target
        if not target or not target.strip():
            raise AttrilensError("The response is empty (or only whitespace). Pass a non-empty --target.")
        try:
            ids = self.lm.encode_response(target)
        except AttrilensError as exc:
            raise AttrilensError(f"The target cannot be tokenised as given: {exc}") from None
        if generate:  # one forward pass per generated token (the only model computation of a trace)
            cost.add(forward_passes=len(ids), tokens=len(self.lm.encode_prompt(prompt)) + len(ids))
        q = self._engine_ids(ids)
        candidates = maximal_spans(self._ends(q), min_len) if len(ids) >= min_len else []
        sums = [float(self._logp[ids[a:b]].sum()) for a, b in candidates]
        kept = select_spans(candidates, sums, span_budget(len(ids), max_spans))
        cap = max(CANDIDATES, 10 * top_k)
        found = [self._occurrence_documents(q[a:b], cap) for a, b in kept]
        scores = self._bm25(f"{prompt} {target}", sorted({d for _, docs in found for d in docs}))
        offsets = char_spans(self.lm.tokenizer, target, ids, kept)
        spans = []
        for (a, b), (start, end), (count, docs) in zip(kept, offsets, found, strict=True):
            best = sorted(docs, key=lambda d: -scores[d])[:top_k]  # stable: ties keep corpus order
            spans.append(VerbatimSpan(start, end, target[start:end], (a, b), count,
                                      float(self._logp[ids[a:b]].mean()),
                                      [self._hit(rank, d, scores[d], q[a:b]) for rank, d in enumerate(best, 1)]))
        cost.seconds = time.perf_counter() - t0
        cost.extra.update({"maximal_spans": len(candidates), "documents_scored": len(scores)})
        return VerbatimResult(prompt, target, min_len, self.n_tokens, spans, cost)

    def _hit(self, rank: int, d: int, score: float, span: list[int]) -> VerbatimDocument:
        """Document d with the character offsets of every occurrence of `span` (stored ids) in its text."""
        doc_id, text = self._document(d)
        toks = self._document_tokens(d)
        n = len(span)
        if len(toks) >= n:
            windows = np.lib.stride_tricks.sliding_window_view(toks, n)
            at = np.nonzero((windows == np.asarray(span, dtype=toks.dtype)).all(axis=1))[0].tolist()
        else:
            at = []
        matches = char_spans(self.lm.tokenizer, text, self.from_engine[toks].tolist(), [(p, p + n) for p in at])
        return VerbatimDocument(rank, doc_id, float(score), text, matches)

    def _bm25(self, query: str, docs: list[int]) -> dict[int, float]:
        """BM25 of each candidate document against the query, the candidates being the collection (OLMoTrace)."""
        if not docs:
            return {}
        import bm25s

        texts = [self._document(d)[1] for d in docs]
        q = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        corpus_tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        if not q or not corpus_tokens.vocab:
            return dict.fromkeys(docs, 0.0)
        retriever = bm25s.BM25()
        retriever.index(corpus_tokens, show_progress=False)
        return dict(zip(docs, (float(s) for s in retriever.get_scores(q)), strict=True))


def build_verbatim_index(lm: LM, corpus, out: Path | str, *, progress: bool = True, text_field: str = "text",
                         id_field: str = "id") -> VerbatimIndex:
    """Index a corpus for verbatim span tracing and open it (`write_verbatim_index`: resumed when unfinished,
    opened as it is when finished)."""
    return VerbatimIndex.open(write_verbatim_index(lm, corpus, out, progress=progress, text_field=text_field,
                                                   id_field=id_field), lm)

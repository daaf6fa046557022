"""`VerbatimResult`: the spans of a response found word for word in the training corpus ("attrilens/verbatim/v1")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from attrilens.errors import AttrilensError
from attrilens.results import Cost, Result


@dataclass
class VerbatimDocument:
    """A training document that contains a span: rank (1 = best BM25), id, score, whole text, the span's places."""

    rank: int
    id: str
    score: float  # BM25 of the document against prompt + response
    text: str
    matches: list[tuple[int, int]]  # [start, end) character offsets of every occurrence of the span in `text`

    def to_dict(self) -> dict[str, Any]:
        """The document as the JSON entry the front end reads."""
        return {"rank": self.rank, "id": self.id, "score": self.score, "text": self.text,
                "matches": [[a, b] for a, b in self.matches]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerbatimDocument:
        """Rebuild a document from its JSON entry."""
        return cls(int(d["rank"]), str(d["id"]), float(d["score"]), str(d["text"]),
                   [(int(a), int(b)) for a, b in d["matches"]])


@dataclass
class VerbatimSpan:
    """A maximal span of the response that occurs verbatim in the corpus, with the documents that contain it."""

    start: int  # character offsets into the response: target[start:end] == text
    end: int
    text: str
    tokens: tuple[int, int]  # response token range [first, last + 1)
    count: int  # occurrences of the span's tokens in the corpus
    unigram_logprob: float  # mean per-token log unigram probability in the corpus (rarer = lower)
    documents: list[VerbatimDocument]

    def to_dict(self) -> dict[str, Any]:
        """The span as the JSON entry the front end reads."""
        return {"start": self.start, "end": self.end, "text": self.text, "tokens": list(self.tokens),
                "count": self.count, "unigram_logprob": self.unigram_logprob,
                "documents": [d.to_dict() for d in self.documents]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerbatimSpan:
        """Rebuild a span from its JSON entry."""
        first, last = d["tokens"]
        return cls(int(d["start"]), int(d["end"]), str(d["text"]), (int(first), int(last)), int(d["count"]),
                   float(d["unigram_logprob"]), [VerbatimDocument.from_dict(x) for x in d["documents"]])


@dataclass
class VerbatimResult(Result):
    """OLMoTrace-style spans of a response: where the training data states it word for word (not "influenced by")."""

    SCHEMA: ClassVar[str] = "attrilens/verbatim/v1"

    prompt: str
    target: str
    min_len: int
    n_corpus_tokens: int
    spans: list[VerbatimSpan]
    cost: Cost = field(default_factory=Cost)
    method: str = "verbatim"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "method": self.method, "prompt": self.prompt, "target": self.target,
                "min_len": self.min_len, "n_corpus_tokens": self.n_corpus_tokens,
                "spans": [s.to_dict() for s in self.spans], "cost": self.cost.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerbatimResult:
        try:
            return cls(str(d["prompt"]), str(d["target"]), int(d["min_len"]), int(d["n_corpus_tokens"]),
                       [VerbatimSpan.from_dict(s) for s in d["spans"]], Cost.from_dict(d.get("cost", {})),
                       str(d.get("method", "verbatim")))
        except (KeyError, TypeError, ValueError) as exc:
            what = exc.args[0] if isinstance(exc, KeyError) else exc
            raise AttrilensError(f"The verbatim result lacks or garbles a field ({what!r}). Pass what to_json() "
                                 "wrote.") from None

    def to_frame(self):
        """One row per span × document (a span without documents gets one row with empty document fields)."""
        import pandas as pd

        cols = ["span", "start", "end", "text", "count", "unigram_logprob", "rank", "id", "score", "matches"]
        rows = []
        for k, s in enumerate(self.spans):
            base = {"span": k, "start": s.start, "end": s.end, "text": s.text, "count": s.count,
                    "unigram_logprob": s.unigram_logprob}
            for d in s.documents or [None]:
                rows.append({**base, **({"rank": d.rank, "id": d.id, "score": d.score, "matches": d.matches}
                                        if d is not None else {})})
        return pd.DataFrame(rows, columns=cols)

    def ids(self) -> list[str]:
        """Document ids over all spans, each once, in span order then rank."""
        seen: dict[str, None] = {}
        for s in self.spans:
            for d in s.documents:
                seen.setdefault(d.id, None)
        return list(seen)

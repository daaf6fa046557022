"""`ContextResult`: one score per context source (JSON schema "attrilens/context/v1"), re-scorable by response span."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from attrilens.context.faithfulness import Faithfulness
from attrilens.errors import AttrilensError
from attrilens.results import Cost, Result, Timer

# Given the indices of the response tokens to explain, one score per source (None: pruned).
TokenRescorer = Callable[[Sequence[int]], list[float | None]]


def additive_rescorer(contrib: torch.Tensor) -> TokenRescorer:
    """Scores that add over response tokens: score(s) = Σ_{t in span} contrib[s, t] (NaN rows = pruned)."""

    def rescore(tokens: Sequence[int]) -> list[float | None]:
        sub = contrib[:, list(tokens)].sum(dim=1)
        return [None if math.isnan(v) else float(v) for v in sub.tolist()]

    return rescore


@dataclass
class SourceScore:
    """One context source and its attribution score (None when a pruning stage removed it unscored)."""

    index: int
    text: str
    start: int
    end: int
    level: str
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        """The source's JSON object."""
        return {"index": self.index, "text": self.text, "start": self.start, "end": self.end, "level": self.level,
                "score": self.score}


@dataclass
class ContextResult(Result):
    """Attribution of a response to the sources of its context; positive score = the source supports it."""

    SCHEMA: ClassVar[str] = "attrilens/context/v1"

    method: str
    query: str
    response: str
    sources: list[SourceScore]
    cost: Cost = field(default_factory=Cost)
    # Not serialised: character offsets of the response tokens and how to re-score a subset of them.
    token_offsets: list[tuple[int, int]] = field(default_factory=list, repr=False, compare=False)
    rescorer: TokenRescorer | None = field(default=None, repr=False, compare=False)
    details: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # LL(response | full context) vs LL(response | the kept context the scores were computed in), and a warning.
    faithfulness: Faithfulness | None = field(default=None, compare=False)
    # How the scores may differ from the target's exact LOO (knockout, proxy scores); None: exact where scored.
    approximation: str | None = None

    @property
    def warning(self) -> str | None:
        """The faithfulness warning: set when pruning left a context that no longer supports the response."""
        return self.faithfulness.warning if self.faithfulness is not None else None

    # ------------------------------------------------------------------ views
    @property
    def scores(self) -> list[float | None]:
        """One score per source, in context order (None: pruned)."""
        return [s.score for s in self.sources]

    def ranking(self) -> list[int]:
        """Source indices from most to least supporting; pruned (None) sources last, in context order."""
        scored = sorted((s for s in self.sources if s.score is not None), key=lambda s: -s.score)
        return [s.index for s in scored] + [s.index for s in self.sources if s.score is None]

    def top(self, k: int = 3) -> list[SourceScore]:
        """The k most supporting sources."""
        return [self.sources[i] for i in self.ranking()[:k]]

    def for_response_span(self, start: int, end: int) -> ContextResult:
        """Scores for the response characters [start, end), from the stored per-token log-probs (no new passes)."""
        if self.rescorer is None or not self.token_offsets:
            raise AttrilensError(
                "This result holds no per-token data (e.g. it was loaded from JSON). "
                "Re-run ContextAttributor.attribute() and call for_response_span on its result."
            )
        if not (0 <= start < end <= len(self.response)):
            raise AttrilensError(
                f"Response span ({start}, {end}) is not inside the response of {len(self.response)} characters. "
                "Pass 0 <= start < end <= len(response)."
            )
        tokens = [t for t, (a, b) in enumerate(self.token_offsets) if a < end and b > start and b > a]
        if not tokens:
            raise AttrilensError(f"Response span ({start}, {end}) covers no response token. Widen the span.")
        cost = Cost()
        with Timer(cost):
            scores = self.rescorer(tokens)
        sources = [replace(s, score=v) for s, v in zip(self.sources, scores, strict=True)]
        a, b = self.token_offsets[tokens[0]][0], self.token_offsets[tokens[-1]][1]
        return ContextResult(
            self.method, self.query, self.response[a:b], sources, cost,
            token_offsets=[(x - a, y - a) for x, y in (self.token_offsets[t] for t in tokens)],
            rescorer=lambda sub: self.rescorer([tokens[i] for i in sub]),
            details={**self.details, "response_span": [a, b]},
            faithfulness=None if self.faithfulness is None else self.faithfulness.for_tokens(tokens),
            approximation=self.approximation,
        )

    # ------------------------------------------------------------------ JSON / pandas
    def to_dict(self) -> dict[str, Any]:
        """The "attrilens/context/v1" document, with the whole cost record (extras included) and the faithfulness
        record (null when unknown)."""
        return {
            "schema": self.SCHEMA,
            "method": self.method,
            "query": self.query,
            "response": self.response,
            "sources": [s.to_dict() for s in self.sources],
            "cost": self.cost.to_dict(),
            "faithfulness": None if self.faithfulness is None else self.faithfulness.to_dict(),
            "approximation": self.approximation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContextResult:
        """Rebuild a result from its document (without per-token data: no re-scoring by response span)."""
        try:
            sources = [SourceScore(int(s["index"]), s["text"], int(s["start"]), int(s["end"]), s["level"],
                                   None if s["score"] is None else float(s["score"])) for s in d["sources"]]
            faith = d.get("faithfulness")
            return cls(d["method"], d["query"], d["response"], sources, Cost.from_dict(d.get("cost", {})),
                       faithfulness=None if faith is None else Faithfulness.from_dict(faith),
                       approximation=d.get("approximation"))
        except (KeyError, TypeError, ValueError) as exc:
            raise AttrilensError(f"Malformed attrilens/context/v1 document ({exc!r}). Pass what to_json() wrote.") from exc

    def to_frame(self):
        """The sources and their scores as a DataFrame."""
        import pandas as pd

        return pd.DataFrame([s.to_dict() for s in self.sources],
                            columns=["index", "text", "start", "end", "level", "score"])

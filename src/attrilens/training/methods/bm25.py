"""BM25: the lexical baseline — Okapi BM25 (bm25s) of the query text against the block texts; no gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.training.corpus import Corpus
from attrilens.training.methods.base import TDA_METHODS, Query, TDAMethod
from attrilens.training.search import ScoreStream
from attrilens.training.store import Shards


@TDA_METHODS.register("bm25")
class BM25(TDAMethod):
    """Okapi BM25 over the block texts (query: prompt and response); rebuilt from the stored texts when opened."""

    stores_features = False
    has_opponents = False  # BM25 has no notion of opposing evidence

    def load(self, state: dict[str, torch.Tensor], corpus: Corpus) -> None:
        """Index the block texts (nothing is stored on disk but the corpus)."""
        import bm25s

        self._bm25s = bm25s
        self._retriever = bm25s.BM25()
        self._retriever.index(bm25s.tokenize(list(corpus.texts), stopwords="en", show_progress=False),
                              show_progress=False)
        self._n = len(corpus.texts)

    def query(self, query: Query) -> str:
        """The query text (prompt and response)."""
        if query.text is None:
            raise AttrilensError("BM25 searches with the query's text, not token ids. Pass the query text.")
        return query.text

    @property
    def query_passes(self) -> int:
        return 0

    def score_stream(self, shards: Shards, query: str) -> ScoreStream:
        """BM25 scores of every block for the query text, in one block (zeros when no query word is indexable)."""
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        if not tokens:
            yield 0, np.zeros(self._n, dtype=np.float32)
            return
        yield 0, torch.as_tensor(self._retriever.get_scores(tokens), dtype=torch.float32).numpy()

    @classmethod
    def benchmark_variants(cls, quick: bool) -> list[tuple[str, dict[str, Any]]]:
        return [("BM25", {})]

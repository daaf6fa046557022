"""Lens 2 — training-data attribution: TrackStar, DataInf, TracIn, grad-dot/grad-cos and BM25 over an on-disk index.

    from attrilens.training import build_index, TrainingIndex
    idx = build_index(lm, "corpus.jsonl", "idx", method="trackstar", proj_dim=4096, eval_queries="queries.jsonl")
    result = TrainingIndex.open("idx", lm).trace("Question: ...\\nAnswer:", target=" Quenth", top_k=10)

Methods are registered classes (`TDA_METHODS`, see `attrilens.training.methods`): adding one is one file.
"""

from __future__ import annotations

from attrilens.training.corpus import Corpus, make_corpus
from attrilens.training.gradients import Example, Featurizer
from attrilens.training.index import TrainingIndex, build_index
from attrilens.training.methods import TDA_METHODS, Query, TDAMethod, TDAOptions
from attrilens.training.result import TraceHit, TraceResult

__all__ = ["TDA_METHODS", "Corpus", "Example", "Featurizer", "Query", "TDAMethod", "TDAOptions", "TraceHit",
           "TraceResult", "TrainingIndex", "build_index", "make_corpus"]

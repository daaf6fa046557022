"""Scores aggregated over several training runs: one index per run (e.g. per data order) of one corpus and method.

LLM Attributor found that the order of training updates matters and that DataInf improves when its scores are
aggregated over checkpoints *and* data orders. A DataInf index already aggregates the checkpoints of one run;
`IndexEnsemble` aggregates whole runs: each index scores the query with its own run's model (the adapter it was
built with), then the per-block scores are averaged (mean) or their median taken — for DataInf jointly over
every run's checkpoints (checkpoints × data orders), for the other methods over the runs' scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.training.index import TrainingIndex
from attrilens.training.result import TraceResult
from attrilens.training.search import AGGREGATES, aggregate_checkpoints, topk_merge
from attrilens.training.store import read_manifest


class IndexEnsemble:
    """Indexes of the same corpus and method built on different runs; `trace` ranks by their aggregated scores."""

    def __init__(self, indexes: Sequence[TrainingIndex], aggregate: str = "mean") -> None:
        if len(indexes) < 1:
            raise AttrilensError("An ensemble needs at least one index. Pass one --index per training run.")
        if aggregate not in AGGREGATES:
            raise AttrilensError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}.")
        first = indexes[0]
        for idx in indexes[1:]:
            if idx.method_name != first.method_name:
                raise AttrilensError(f"The indexes use different methods ({first.method_name} in {first.path}, "
                                     f"{idx.method_name} in {idx.path}). Aggregate indexes of one method.")
            if idx.corpus.fingerprint != first.corpus.fingerprint:
                raise AttrilensError(f"The indexes in {first.path} and {idx.path} hold different corpora (or "
                                     "block lengths). Build every run's index on the same corpus.")
        self.indexes, self.aggregate = list(indexes), aggregate

    @classmethod
    def open(cls, paths: Sequence[Path | str], aggregate: str = "mean", *,
             chat_template: bool | None = None) -> IndexEnsemble:
        """Open each index with the model it was built with (its manifest's model_dir)."""
        indexes = []
        for path in paths:
            manifest = read_manifest(Path(path))
            model_dir = manifest.get("model_dir") or manifest["model"]["name"]
            if not model_dir or not Path(model_dir).is_dir():
                raise AttrilensError(f"The model the index {path} was built with ({model_dir}) is not on disk.")
            switch = manifest.get("chat_template") if chat_template is None else chat_template
            lm = LM.from_pretrained(model_dir).with_chat_template(switch)
            indexes.append(TrainingIndex.open(path, lm, model_dir=model_dir))
        return cls(indexes, aggregate)

    def __len__(self) -> int:
        return len(self.indexes[0])

    def scores(self, prompt: str, target: str, tokens: Sequence[int] | None = None) -> np.ndarray:
        """Scores [blocks, columns]: every run's index scoring the same query with its own model — one column per
        run, or, for a method that scores each saved checkpoint (DataInf), one per run × checkpoint."""
        return self.scores_many([(prompt, target, tokens)])[0]

    def scores_many(self, queries: Sequence[tuple]) -> np.ndarray:
        """`scores` of several (prompt, target[, tokens]) queries: [queries, blocks, columns]. DataInf scores them
        together, in one pair of reads of its (unprojected, large) stored gradients instead of one per query."""
        cols = []
        for idx in self.indexes:
            qs = [idx.method.query(idx.query(*q).query) for q in queries]
            many = getattr(idx.method, "view_score_stream_many", None)
            if many is not None:
                per = np.concatenate([p.numpy() for _, p in many(idx.shards, torch.stack(qs))])  # [n, m, ckpt]
                cols.append(per.transpose(1, 0, 2))
            else:
                cols.append(np.stack([np.concatenate([s for _, s in idx.score_stream(q)]) for q in qs])[:, :, None])
        return np.concatenate(cols, axis=2)

    def aggregated_scores(self, prompt: str, target: str, tokens: Sequence[int] | None = None) -> np.ndarray:
        """One score per block: the mean or median of `scores`' columns (what `trace` ranks by)."""
        return self.aggregated_scores_many([(prompt, target, tokens)])[0]

    def aggregated_scores_many(self, queries: Sequence[tuple]) -> np.ndarray:
        """`aggregated_scores` of several queries: [queries, blocks]."""
        per = torch.from_numpy(self.scores_many(queries)).double()
        return np.stack([aggregate_checkpoints(p, self.aggregate).numpy() for p in per])

    def trace(self, prompt: str, target: str, tokens: Sequence[int] | None = None, top_k: int = 10) -> TraceResult:
        """Top-k proponents and opponents by the mean (or median) over runs of each block's score."""
        if top_k < 1:
            raise AttrilensError(f"top_k must be at least 1, got {top_k}.")
        t0 = time.perf_counter()
        first = self.indexes[0]
        query = first.query(prompt, target, tokens)
        agg = self.aggregated_scores(prompt, target, tokens)
        n = len(agg)
        bi, bs, wi, ws = topk_merge(iter([(0, agg)]), n, min(top_k, n))
        if not first.method.has_opponents:
            wi, ws = np.zeros(0, int), np.zeros(0)
        passes = first.method.query_passes * len(self.indexes)
        cost = Cost(seconds=time.perf_counter() - t0)
        cost.add(forward_passes=passes, tokens=len(query.query.example.ids) * passes)
        cost.extra.update(examples_scored=n, runs=len(self.indexes), aggregate=self.aggregate)
        method = f"{first.method_name} ({self.aggregate} of {len(self.indexes)} runs)"
        return TraceResult(method, prompt, target, query.tokens, first.hits(bi, bs), first.hits(wi, ws), cost)

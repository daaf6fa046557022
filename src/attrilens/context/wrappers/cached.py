"""Cached passes (AttriBoT): reuse the full prompt's KV cache up to the first token an ablation changes."""

from __future__ import annotations

from attrilens.context.scorers import CachedScorer
from attrilens.context.wrappers.base import CONTEXT_WRAPPERS, ScorerWrapper


@CONTEXT_WRAPPERS.register("cached")
class Cached(ScorerWrapper):
    """KV-cached scoring: the same numbers as naive with about half the tokens computed (the default)."""

    summary = "KV-cached passes: exact, about half the tokens of naive (the default)"
    scorer_class = CachedScorer

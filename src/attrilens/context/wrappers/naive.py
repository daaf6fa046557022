"""Naive passes: every ablated prompt runs from scratch (batched, padded)."""

from __future__ import annotations

from attrilens.context.scorers import Scorer
from attrilens.context.wrappers.base import CONTEXT_WRAPPERS, ScorerWrapper


@CONTEXT_WRAPPERS.register("naive")
class Naive(ScorerWrapper):
    """Run every ablated prompt from scratch ('loo' alone = naive exact LOO)."""

    summary = "every ablated prompt run from scratch ('loo' alone = naive exact LOO)"
    scorer_class = Scorer

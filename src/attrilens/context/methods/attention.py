"""Attention weights (baseline): one pass; how much the positions predicting the response attend to each source.

The weights come from `Scorer.response_attention` (the same read-out attention-pruning takes from the KV cache).
Scores add over response tokens, so a response sub-span is re-scored without new passes.
"""

from __future__ import annotations

import torch

from attrilens.context.methods.base import CONTEXT_METHODS, ContextMethod, Estimate
from attrilens.context.run import AttributionRun
from attrilens.context.scorers import Scorer


@CONTEXT_METHODS.register("attention")
class AttentionWeights(ContextMethod):
    """Attention from the position predicting response token t to source s's tokens (mean of layers, heads)."""

    summary = "baseline: attention mass from the positions predicting the response to each source (one pass)"

    @torch.no_grad()
    def estimate(self, run: AttributionRun) -> Estimate:
        """[S, T] attention mass pooled per source (one eager pass over prompt + response), additive over tokens."""
        scorer = Scorer(run.lm, run.prompt, run.response_ids, cost=run.cost)
        return Estimate.additive(scorer.response_attention(run.sources))

"""Attention pruning: the response's own attention picks the candidates; only those are ablated (the rest: None).

AttriBoT prunes with a proxy model's LOO; neither real model we ship has a small sibling, and an early-exit proxy
tracks SmolLM2's LOO poorly. The target's attention from the positions predicting the response is a free
candidate ranking instead: with a cached (or knockout) scorer it is read from one response-length row over the
full prompt's KV cache, so pruning costs T tokens. The top-K sources by attention mass are then scored by the
inner method *inside the full context* (their scores are what the unpruned method gives them); the others are
pruned, which the result's faithfulness record reports (LL of the response under the kept sources alone).
"""

from __future__ import annotations

import torch

from attrilens.context.methods.base import ContextMethod
from attrilens.context.run import AttributionRun, SourceDrops
from attrilens.context.scorers import Scorer
from attrilens.context.wrappers.base import CONTEXT_WRAPPERS, DropsWrapper
from attrilens.context.wrappers.hierarchical import TopKOptions, top_k_indices
from attrilens.errors import AttrilensError
from attrilens.spans import Sources


@CONTEXT_WRAPPERS.register("attention-pruning")
class AttentionPruning(DropsWrapper):
    """Score only the top-K sources by the response's attention mass (one response row over the cache)."""

    summary = "the response's attention (one response-length row) picks the top-K sources; only those are scored"
    Options = TopKOptions
    slot = "proxy"  # it prunes in the proxy's place
    order = 20

    def wrap(self, inner: SourceDrops, method: ContextMethod, run: AttributionRun) -> SourceDrops:
        """Attention mass per source, keep the top-K, then `method.drops` on those candidates in the full context."""
        k = int(self.options.top_k)
        if inner != method.drops:
            raise AttrilensError("attention-pruning picks sources of the whole context; it does not combine with "
                                 "hierarchical. Use one of them.")

        def drops(scorer: Scorer, sources: Sources) -> torch.Tensor:
            mass = scorer.response_attention(sources).sum(dim=1)
            kept = top_k_indices(mass.float(), k)
            run.details.update(attention_mass=mass.tolist(), kept_sources=kept)
            return method.drops(scorer, sources, candidates=kept)

        return drops

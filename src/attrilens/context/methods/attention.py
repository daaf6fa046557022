"""Attention weights (baseline): one pass; how much the positions predicting the response attend to each source.

Like the gradient baseline it calls the model object directly (attention weights are not part of `LM`'s scoring
interface). Scores add over response tokens, so a response sub-span is re-scored without new passes.
"""

from __future__ import annotations

import torch

from attrilens.context.methods.base import CONTEXT_METHODS, ContextMethod, Estimate
from attrilens.context.run import AttributionRun
from attrilens.context.token_sources import pool_by_source, prompt_token_owner
from attrilens.errors import AttrilensError
from attrilens.results import Timer


@CONTEXT_METHODS.register("attention")
class AttentionWeights(ContextMethod):
    """Attention from the position predicting response token t to source s's tokens (mean of layers, heads)."""

    summary = "baseline: attention mass from the positions predicting the response to each source (one pass)"

    @torch.no_grad()
    def estimate(self, run: AttributionRun) -> Estimate:
        """[S, T] attention mass pooled per source, additive over response tokens."""
        lm = run.lm
        with Timer(run.cost):
            ids, owner = prompt_token_owner(lm, run.prompt, run.sources)
            full = ids + list(run.response_ids)
            lm.check_length(len(full))
            with lm.eager_attention():
                out = lm.model(input_ids=torch.tensor([full], device=lm.device), output_attentions=True)
            if not out.attentions or out.attentions[0] is None:
                raise AttrilensError("This model returned no attention weights. Use another method (e.g. cached).")
            att = torch.stack([a[0].float() for a in out.attentions]).mean(dim=(0, 1))  # [N, N]
            n, T = len(ids), len(run.response_ids)
            run.cost.add(1, len(full))
            contrib = pool_by_source(att[n - 1 : n - 1 + T, :n].cpu(), owner, len(run.sources))
        return Estimate.additive(contrib)

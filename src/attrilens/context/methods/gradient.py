"""Gradient norm (baseline): input-embedding saliency of each source for each response token.

One forward and T backward passes (a backward counts as two forward passes in the cost). Scores add over
response tokens, so a response sub-span is re-scored without new passes.
"""

from __future__ import annotations

import torch

from attrilens.context.methods.base import CONTEXT_METHODS, ContextMethod, Estimate
from attrilens.context.run import AttributionRun
from attrilens.context.token_sources import pool_by_source, prompt_token_owner
from attrilens.results import Timer


@CONTEXT_METHODS.register("gradient")
class GradientNorm(ContextMethod):
    """score(s) = Σ_t Σ over source s's tokens of ‖∂ log p(r_t) / ∂ e_i‖₂."""

    summary = "baseline: Σ over a source's tokens of ‖∂ log p(r_t) / ∂ embedding‖ (1 + 2T passes)"

    def estimate(self, run: AttributionRun) -> Estimate:
        """[S, T] gradient norms pooled per source, additive over response tokens."""
        lm, rids = run.lm, list(run.response_ids)
        with Timer(run.cost):
            ids, owner = prompt_token_owner(lm, run.prompt, run.sources)
            full = ids + rids
            lm.check_length(len(full))
            n, T = len(ids), len(rids)
            with torch.enable_grad():
                emb = lm.arch.embed(torch.tensor([full], device=lm.device)).detach().requires_grad_(True)
                logits = lm.model(inputs_embeds=emb).logits[0, n - 1 : n - 1 + T].float()
                lp = torch.log_softmax(logits, -1)[torch.arange(T), torch.as_tensor(rids, device=lm.device)]
                norms = []
                for t in range(T):
                    (g,) = torch.autograd.grad(lp[t], emb, retain_graph=t < T - 1)
                    norms.append(g[0, :n].norm(dim=-1).cpu())
            run.cost.add(1 + 2 * T, len(full) * (1 + 2 * T))
            contrib = pool_by_source(torch.stack(norms), owner, len(run.sources))
        return Estimate.additive(contrib)

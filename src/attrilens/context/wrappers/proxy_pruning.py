"""Proxy pruning (AttriBoT): the proxy ranks the sources, the target confirms its top-K exactly."""

from __future__ import annotations

import torch

from attrilens.context.methods.base import ContextMethod
from attrilens.context.proxy import proxy_drops
from attrilens.context.run import AttributionRun, SourceDrops
from attrilens.context.scorers import Scorer
from attrilens.context.wrappers.base import CONTEXT_WRAPPERS, DropsWrapper
from attrilens.context.wrappers.hierarchical import TopKOptions, top_k_indices
from attrilens.spans import Sources


@CONTEXT_WRAPPERS.register("proxy-pruning")
class ProxyPruning(DropsWrapper):
    """Target drops of the proxy's global top-K sources inside the context pruned to them (others: None).

    score(s) = LL_target(r | C_K) − LL_target(r | C_K ∖ s), C_K = the context of the top-K; K + 1 target passes,
    and 2 more for the faithfulness report (LL of the response under the full context and under none).
    """

    summary = "the proxy ranks the sources, the target confirms its top-K exactly"
    Options = TopKOptions
    slot = "proxy"
    order = 20
    proxy_mode = "prune"

    def wrap(self, inner: SourceDrops, method: ContextMethod, run: AttributionRun) -> SourceDrops:
        """`inner` run by the proxy ranks; `method.drops` on the target scores the top-K."""

        def drops(scorer: Scorer, sources: Sources) -> torch.Tensor:
            proxy_scores = proxy_drops(run, inner, sources)[0].sum(dim=1)
            keep = top_k_indices(proxy_scores, int(self.options.top_k))
            pruned = [i for i in range(len(sources)) if i not in set(keep)]
            drop = method.drops(scorer, sources, base_drop=pruned, candidates=keep)
            run.details["proxy_scores"] = [None if torch.isnan(v) else float(v) for v in proxy_scores]
            return drop

        return drops

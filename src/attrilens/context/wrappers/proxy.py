"""Proxy LOO (AttriBoT): a smaller model computes the drops; its scores stand in for the target's."""

from __future__ import annotations

import torch

from attrilens.context.methods.base import ContextMethod
from attrilens.context.proxy import proxy_drops
from attrilens.context.run import AttributionRun, SourceDrops
from attrilens.context.scorers import Scorer
from attrilens.context.wrappers.base import CONTEXT_WRAPPERS, DropsWrapper
from attrilens.spans import Sources


@CONTEXT_WRAPPERS.register("proxy")
class Proxy(DropsWrapper):
    """The proxy model's drops as the scores (per-token columns are the proxy's tokens)."""

    summary = "a smaller proxy model (--proxy) computes the scores instead of the target"
    slot = "proxy"
    order = 20
    proxy_mode = "scores"
    approximation = "proxy: the scores are the proxy model's leave-one-out, not the target's"

    def wrap(self, inner: SourceDrops, method: ContextMethod, run: AttributionRun) -> SourceDrops:
        """`inner` run by the proxy instead of the target."""

        def drops(scorer: Scorer, sources: Sources) -> torch.Tensor:
            drop, pids = proxy_drops(run, inner, sources)
            run.token_lm, run.token_ids = run.proxy, pids
            return drop

        return drops

"""Exact leave-one-out: score(s) = LL(r | C) − LL(r | C ∖ s), from a naive or KV-cached scorer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attrilens.context.methods.base import CONTEXT_METHODS, ContextMethod
from attrilens.context.scorers import Scorer, loo
from attrilens.spans import Sources


@CONTEXT_METHODS.register("loo")
class ExactLOO(ContextMethod):
    """Exact leave-one-out of each source (the ground truth; naive, cached, hierarchical and proxy apply)."""

    summary = "exact leave-one-out, LL(r | C) − LL(r | C ∖ s) per source (the ground truth; the default)"
    uses_scorer = True
    ablates_sources = True

    def drops(self, scorer: Scorer, sources: Sources, *, base_drop: Sequence[int] = (),
              candidates: Sequence[int] | None = None) -> torch.Tensor:
        """Per-source, per-token drop of LOO inside the context without `base_drop`."""
        return loo(scorer, sources, base_drop=base_drop, candidates=candidates)[1]

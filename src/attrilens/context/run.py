"""`AttributionRun`: one attribution in progress, what every method and wrapper reads and writes.

It holds the target (and proxy) model, the prompt template, the sources and the response, makes scorers of
the kind the method name asks for (naive or cached), and collects costs and details.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attrilens.context.scorers import Scorer
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.spans import Sources

# A per-source, per-token drop [S, T] of every source (NaN rows: pruned) under a scorer; what wrappers compose.
SourceDrops = Callable[[Scorer, Sources], torch.Tensor]


@dataclass
class AttributionRun:
    """The inputs of one attribution, its scorer kind, and where costs and details accumulate."""

    lm: LM
    proxy: LM | None
    prompt: Callable[[str], str]
    sources: Sources
    response: str
    response_ids: list[int]
    batch_size: int = 8
    scorer_class: type[Scorer] | None = None  # set by the naive/cached wrapper for methods that use a scorer
    cost: Cost = field(default_factory=Cost)  # the target's
    proxy_cost: Cost = field(default_factory=Cost)
    details: dict[str, Any] = field(default_factory=dict)
    # The model and ids whose tokens the per-token columns count, when not the target's (proxy scores).
    token_lm: LM | None = None
    token_ids: list[int] | None = None
    # Per-token log p of the response under the target, by context, from every base pass a target scorer ran.
    target_logprobs: dict[str, torch.Tensor] = field(default_factory=dict)

    def scorer(self, lm: LM | None = None, response_ids: Sequence[int] | None = None,
               cost: Cost | None = None) -> Scorer:
        """A fresh scorer of the response under `lm` (default: the target, its ids and cost), naive or cached.

        A scorer of the target's response records its base passes in `target_logprobs`.
        """
        if self.scorer_class is None:
            raise AttrilensError("This context method asked for a scorer without declaring uses_scorer = True. "
                                 "Set uses_scorer = True on the method class.")
        lm = lm if lm is not None else self.lm
        ids = self.response_ids if response_ids is None else list(response_ids)
        record = self.target_logprobs if lm is self.lm and ids == self.response_ids else None
        return self.scorer_class(lm, self.prompt, ids, batch_size=self.batch_size,
                                 cost=self.cost if cost is None else cost, record=record)

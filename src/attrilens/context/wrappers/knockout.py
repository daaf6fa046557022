"""Attention knockout (approximate LOO): hide a source from the response instead of removing it from the prompt.

The full prompt runs once and keeps its KV cache. Ablating a set of sources then re-runs only the response:
its positions may not attend to the sources' tokens (Geva et al. 2023's attention knockout, applied to every
layer), while the cached prompt states stay as computed with the sources present. Cost per ablation: one
response-length row instead of the prompt from the ablated source on (cached LOO) or the whole prompt (naive).
What it leaves out: whatever a source told the response *through later context tokens* (their states still
carry it), so scores are a lower-fidelity estimate of LOO — results name the method "knockout" and say so in
their `approximation` field. Rows whose ablated tokens reach the prompt's last token (which predicts the first
response token and cannot be hidden from itself) are scored exactly, by removal (counted in `exact_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attrilens.context.scorers import CachedScorer, partition_key, token_logprobs
from attrilens.context.wrappers.base import CONTEXT_WRAPPERS, ScorerWrapper
from attrilens.results import Timer
from attrilens.spans import Sources

APPROXIMATION = ("knockout: each source is hidden from the response's attention, not removed from the prompt; "
                 "the prompt's later tokens still carry what they read from it, so scores approximate LOO")


class KnockoutScorer(CachedScorer):
    """A cached scorer whose source ablations hide the sources' tokens from the response (one row each).

    Contexts given as text (`base`, `score`) are scored exactly, as by `CachedScorer`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bases: dict[tuple, torch.Tensor] = {}  # (partition_key, dropped sources) -> per-token log p
        self.exact_rows = 0

    def base_without(self, sources: Sources, drop: Sequence[int]) -> torch.Tensor:
        """The full context's pass (kept for the ablations); with `drop`, the response with those sources hidden."""
        full = self.base(sources.context)
        if not drop:
            return full
        dropped = tuple(sorted(set(drop)))
        key = (partition_key(sources), dropped)
        if key not in self._bases:
            self._bases[key] = self.score_without(sources, [dropped])[0]
        return self._bases[key]

    def score_without(self, sources: Sources, drops: Sequence[Sequence[int]]) -> torch.Tensor:
        """[len(drops), T] per-token log p of the response with each set of sources hidden from it."""
        self.base(sources.context)  # the full prompt's cache (reused when it is the last base)
        owner = self.token_owner(sources)
        n, T = len(self.base_ids), len(self.response_ids)
        hides = [[p for p, s in enumerate(owner) if s in dropped] for dropped in map(set, drops)]
        exact = [i for i, h in enumerate(hides) if h and max(h) >= n - 1]
        out = torch.empty(len(drops), T)
        if exact:  # the prompt's last token belongs to a hidden source: remove the sources instead
            out[exact] = self.score([sources.ablate(drops[i]) for i in exact])
            self.exact_rows += len(exact)
        rows = [i for i in range(len(drops)) if i not in set(exact)]
        # the response's row: the prompt's last token (predicts response token 0), then the response but its last
        suffix = [self.base_ids[n - 1], *self.response_ids[:-1]]
        with Timer(self.cost):
            for s in range(0, len(rows), self.batch_size):
                group = rows[s : s + self.batch_size]
                ext = self.lm.extend(self.prefix, [n - 1] * len(group), [suffix] * len(group),
                                     logits_at=[range(T)] * len(group), hide=[hides[i] for i in group])
                self.cost.add(len(group), len(group) * T)
                for r, i in enumerate(group):
                    out[i] = token_logprobs(ext.logits[r], self.response_ids)
        return out


@CONTEXT_WRAPPERS.register("knockout")
class Knockout(ScorerWrapper):
    """Approximate ablations: one response-length row per ablation over the full prompt's KV cache."""

    summary = ("approximate: hide each source from the response's attention (one response-length row per "
               "ablation over the full prompt's cache) instead of removing it")
    scorer_class = KnockoutScorer
    approximation = APPROXIMATION

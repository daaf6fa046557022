"""ContextCite (baseline; Cohen-Wang et al. 2024): random ablation masks, a sparse linear fit of the response's logit.

The estimator is the `context-cite` package's (0.0.4): its masks for the same n and seed, its logit target and its
Lasso on standardised masks rescaled by the response length (see `attrilens.context.surrogate`); the same masks
and log-probabilities give the package's weights up to the solver's tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attrilens.context.methods.base import CONTEXT_METHODS, ContextMethod, Estimate
from attrilens.context.run import AttributionRun
from attrilens.context.surrogate import fit, random_masks, sequence_logit
from attrilens.errors import AttrilensError
from attrilens.options import option


@dataclass(frozen=True)
class ContextCiteOptions:
    """n_ablations random masks (mask i drawn with seed + i, keep probability 0.5), Lasso penalty alpha."""

    n_ablations: int = option(64, help="random keep-masks the Lasso is fitted on: more masks, steadier scores, one "
                                       "forward pass each")
    alpha: float = option(0.01, help="Lasso penalty: larger values give fewer non-zero (sparser) source scores")
    seed: int = option(0, help="seed of the random masks (mask i is drawn with seed + i); the attributor's seed")

    def __post_init__(self) -> None:
        if int(self.n_ablations) < 2:
            raise AttrilensError(f"n_ablations must be at least 2 (ContextCite fits a regression on the ablations), "
                                 f"got {self.n_ablations}. Pass --n-ablations 2 or more.")
        if not float(self.alpha) >= 0:
            raise AttrilensError(f"alpha (the Lasso penalty) must be a number >= 0, got {self.alpha}. Pass e.g. 0.01.")


@CONTEXT_METHODS.register("contextcite")
class ContextCite(ContextMethod):
    """ContextCite: the Lasso weights of the response's logit on random source-keep masks."""

    summary = ("baseline (Cohen-Wang et al. 2024; the context-cite package's estimator): Lasso of the response's logit "
               "on n_ablations random keep-masks")
    Options = ContextCiteOptions
    uses_scorer = True

    def estimate(self, run: AttributionRun) -> Estimate:
        """Scores from n_ablations random ablations, and a re-scorer that refits on a response sub-span."""
        o = self.options
        masks = random_masks(len(run.sources), int(o.n_ablations), seed=o.seed)
        scorer = run.scorer()
        if scorer.cached:
            scorer.base_without(run.sources, [])
        logprobs = scorer.score_without(run.sources, [np.flatnonzero(m == 0).tolist() for m in masks])

        def rescore(tokens: Sequence[int]) -> list[float | None]:
            tokens = list(tokens)
            return fit(masks, sequence_logit(logprobs[:, tokens]), len(tokens), alpha=o.alpha).tolist()

        return Estimate(rescore(range(logprobs.shape[1])), rescore)

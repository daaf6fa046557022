"""`ContextMethod`: an estimator of how much each context source supports the response, registered by name.

A method declares what it can be combined with instead of the attributor knowing its name:
`uses_scorer` (it computes from a `Scorer`, so `naive` / `cached` apply; `cached` by default) and
`ablates_sources` (it computes a per-source, per-token drop for any candidates inside a context with some
sources already removed, so `hierarchical`, `proxy` and `proxy-pruning` apply; implies a scorer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from attrilens.context.options import Configurable
from attrilens.context.result import TokenRescorer, additive_rescorer
from attrilens.context.run import AttributionRun
from attrilens.context.scorers import Scorer
from attrilens.registry import Registry
from attrilens.spans import Sources


@dataclass
class Estimate:
    """What a method returns: one score per source (None: pruned) and how to re-score a response sub-span."""

    scores: list[float | None]
    rescorer: TokenRescorer

    @classmethod
    def additive(cls, contrib: torch.Tensor) -> Estimate:
        """Scores that add over response tokens: score(s) = Σ_t contrib[s, t] (contrib [S, T]; NaN rows = pruned)."""
        rescorer = additive_rescorer(contrib)
        return cls(rescorer(range(contrib.shape[1])), rescorer)


class ContextMethod(Configurable):
    """An estimator: scores for every source of one attribution run (see the module docstring for capabilities).

    Subclasses set `summary`, optionally `Options` (a dataclass with defaults, validated in `__post_init__`) and
    the capability flags, and implement `estimate(run)`, or `drops(...)` when `ablates_sources` is True.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    option_kind = "context method"
    uses_scorer: ClassVar[bool] = False
    ablates_sources: ClassVar[bool] = False

    @classmethod
    def takes_scorer(cls) -> bool:
        """Whether the method computes from a scorer (naive / cached apply)."""
        return cls.uses_scorer or cls.ablates_sources

    def estimate(self, run: AttributionRun) -> Estimate:
        """Scores of `run.sources` for `run.response` (methods that do not ablate sources implement this)."""
        raise NotImplementedError(f"{type(self).__name__} must implement estimate(run).")

    def drops(self, scorer: Scorer, sources: Sources, *, base_drop: Sequence[int] = (),
              candidates: Sequence[int] | None = None) -> torch.Tensor:
        """[S, T] log-prob drop of each candidate inside the context without `base_drop` (NaN rows: not scored).

        Methods with `ablates_sources = True` implement this; hierarchical and proxy wrappers call it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement drops(scorer, sources, ...).")


CONTEXT_METHODS: Registry[type[ContextMethod]] = Registry("context method")

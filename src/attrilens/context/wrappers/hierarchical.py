"""Hierarchical pruning (AttriBoT): paragraph drops, keep the top-K paragraphs, fine drops inside them only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrilens.context.methods.base import ContextMethod
from attrilens.context.run import AttributionRun, SourceDrops
from attrilens.context.scorers import Scorer
from attrilens.context.wrappers.base import CONTEXT_WRAPPERS, DropsWrapper
from attrilens.errors import AttrilensError
from attrilens.options import option
from attrilens.spans import Sources


def top_k_indices(scores: torch.Tensor, k: int) -> list[int]:
    """Indices whose score is ≥ the k-th largest (ties at the threshold are all kept; NaN never kept)."""
    if k < 1:
        raise AttrilensError(f"top_k must be at least 1, got {k}. Pass --top-k 1 or more.")
    valid = ~torch.isnan(scores)
    if not valid.any():
        return []
    vals = scores[valid]
    threshold = torch.topk(vals, min(k, len(vals))).values[-1]
    return [i for i in range(len(scores)) if valid[i] and scores[i] >= threshold]


@dataclass(frozen=True)
class TopKOptions:
    """top_k: how many of the best-ranked sources (paragraphs, or the proxy's or attention's picks) are kept."""

    top_k: int = option(3, help="sources kept by the ranking stage (paragraphs, or the proxy's or attention's picks); "
                                "fewer: cheaper, but more sources pruned")

    def __post_init__(self) -> None:
        if int(self.top_k) < 1:
            raise AttrilensError(f"top_k must be at least 1, got {self.top_k}. Pass --top-k 1 or more.")


@dataclass(frozen=True)
class HierarchicalOptions(TopKOptions):
    """Paragraphs kept: paragraph_k, else top_k (paragraph_k lets proxy-pruning's top_k count sentences)."""

    paragraph_k: int | None = option(None, help="paragraphs the hierarchical stage keeps (None: top_k), so that "
                                                "proxy-pruning's top_k can count sentences")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.paragraph_k is not None and int(self.paragraph_k) < 1:
            raise AttrilensError(f"paragraph_k must be at least 1, got {self.paragraph_k}. Pass 1 or more, or None.")

    @property
    def paragraphs_kept(self) -> int:
        """K of the paragraph stage."""
        return int(self.paragraph_k if self.paragraph_k is not None else self.top_k)


@CONTEXT_WRAPPERS.register("hierarchical")
class Hierarchical(DropsWrapper):
    """Paragraph-level drops first; fine drops only inside the kept paragraphs (the others get None).

    Cost: P + 1 passes for the paragraphs, then one per surviving source (+1 base pass for the pruned
    context unless every paragraph is kept, when the scorer reuses the full pass); when it prunes, the
    faithfulness report adds one short pass without context (see `attrilens.context.faithfulness`).
    """

    summary = "paragraph LOO, keep the top-K paragraphs, sentence LOO inside them only"
    Options = HierarchicalOptions
    order = 10

    def check(self, level: str) -> None:
        """Paragraphs are what this wrapper refines, so the sources must be finer."""
        if level == "paragraph":
            raise AttrilensError("Hierarchical LOO refines paragraphs into sentences or words; pass level='sentence'.")

    def wrap(self, inner: SourceDrops, method: ContextMethod, run: AttributionRun) -> SourceDrops:
        """Paragraph drops from `inner`, then `method.drops` on the sources of the kept paragraphs."""
        k = self.options.paragraphs_kept

        def drops(scorer: Scorer, fine: Sources) -> torch.Tensor:
            paragraphs = Sources.split(fine.context, "paragraph")
            paragraph_scores = inner(scorer, paragraphs).sum(dim=1)
            kept = top_k_indices(paragraph_scores, k)
            pruned = [i for i, p in enumerate(fine.contained_in(paragraphs)) if p not in set(kept)]
            survivors = [i for i in range(len(fine)) if i not in set(pruned)]
            run.details.update(paragraph_scores=paragraph_scores.tolist(), kept_paragraphs=kept)
            return method.drops(scorer, fine, base_drop=pruned, candidates=survivors)

        return drops

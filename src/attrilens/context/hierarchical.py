"""Hierarchical LOO (AttriBoT): paragraph LOO, keep the top-K paragraphs, then fine LOO inside the pruned context."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrilens.context.loo import Scorer, loo
from attrilens.errors import AttrilensError
from attrilens.spans import Sources


@dataclass
class Hierarchy:
    """What the paragraph stage decided: paragraph scores, the kept paragraphs, the pruned fine sources."""

    paragraph_scores: list[float]
    kept_paragraphs: list[int]
    pruned: list[int]


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


def hierarchical_loo(scorer: Scorer, paragraphs: Sources, fine: Sources, top_k: int) -> tuple[torch.Tensor, Hierarchy]:
    """Per-token log-prob drop [S_fine, T] of each fine source inside the kept paragraphs (NaN rows: pruned).

    Cost: P + 1 passes for the paragraph stage, then S_kept (+1 for the pruned context's base pass unless
    every paragraph is kept, when the full pass is reused).
    """
    base, pdrop = loo(scorer, paragraphs)
    pscores = pdrop.sum(dim=1)
    kept = top_k_indices(pscores, top_k)
    owner = fine.contained_in(paragraphs)
    pruned = [i for i, p in enumerate(owner) if p not in set(kept)]
    survivors = [i for i in range(len(fine)) if i not in set(pruned)]
    if pruned:
        _, drop = loo(scorer, fine, base_drop=pruned, candidates=survivors)
    else:
        _, drop = loo(scorer, fine, candidates=survivors, base=base)
    return drop, Hierarchy(pscores.tolist(), kept, pruned)

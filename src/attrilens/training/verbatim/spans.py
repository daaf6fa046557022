"""OLMoTrace's span selection, as pure functions of token positions: maximal spans, then the rarest few.

Kept apart from the engine so that the selection rules are tested on their own and read in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SPAN_FRACTION = 0.05  # OLMoTrace keeps K = ceil(0.05 × response tokens) spans


def maximal_spans(ends: Sequence[int], min_len: int) -> list[tuple[int, int]]:
    """[l, r) spans from `ends[l]` = the end of the longest corpus match starting at response token l: those of at
    least `min_len` tokens that no span starting earlier contains (infini-gram's `attribute` filter)."""
    out, last = [], 0
    for left, right in enumerate(ends):
        if right - left >= min_len and right > last:
            out.append((left, right))
            last = right
    return out


def span_budget(n_tokens: int, max_spans: int | None = None) -> int:
    """How many spans to keep: `max_spans` when given, else OLMoTrace's ceil(0.05 × response length)."""
    return max_spans if max_spans is not None else max(1, math.ceil(SPAN_FRACTION * n_tokens))


def select_spans(spans: Sequence[tuple[int, int]], logprob_sums: Sequence[float], k: int) -> list[tuple[int, int]]:
    """The `k` spans of lowest total unigram log-probability (OLMoTrace's rarity order: the product of the token
    probabilities), taken greedily so that none overlaps one already kept; returned sorted by start.

    Rarest first, ties by earlier start. A span that overlaps a rarer kept span is skipped (not merged), so every
    kept span is still a string that occurs verbatim in the corpus with an exact count.
    """
    order = sorted(range(len(spans)), key=lambda i: (logprob_sums[i], spans[i][0]))
    kept: list[tuple[int, int]] = []
    for i in order:
        if len(kept) == k:
            break
        left, right = spans[i]
        if all(right <= a or left >= b for a, b in kept):
            kept.append((left, right))
    return sorted(kept)

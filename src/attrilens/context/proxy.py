"""Proxy LOO and proxy pruning: a smaller model ranks the sources, the target confirms the top-K exactly."""

from __future__ import annotations

import torch

from attrilens.context.hierarchical import top_k_indices
from attrilens.context.loo import Scorer, loo
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.spans import Sources


def same_tokenizer(a: LM, b: LM) -> bool:
    """True when both models map text to the same ids (same vocabulary and special tokens)."""
    ta, tb = a.tokenizer, b.tokenizer
    return ta.get_vocab() == tb.get_vocab() and ta.all_special_tokens == tb.all_special_tokens


def proxy_response_ids(target: LM, proxy: LM, response: str, target_ids: list[int]) -> list[int]:
    """The response as the proxy's tokens: the target's ids when tokenizers match, else re-tokenised text.

    Re-tokenisation keeps the response text fixed, so the proxy's LL(response) is still the log-likelihood of
    the same characters; only the per-token split differs. It must round-trip through the proxy tokenizer.
    """
    if same_tokenizer(target, proxy):
        return list(target_ids)
    try:
        return proxy.encode_response(response)
    except AttrilensError as exc:
        raise AttrilensError(
            f"The proxy has a different tokenizer and cannot re-tokenise the response: {exc} "
            "Use a proxy with the target's tokenizer."
        ) from None


def proxy_prune(target_scorer: Scorer, fine: Sources, proxy_scores: torch.Tensor, top_k: int,
                ) -> tuple[torch.Tensor, list[int]]:
    """Target LOO on the proxy's global top-K sources inside the context pruned to them.

    score(s) = LL_target(r | C_K) − LL_target(r | C_K ∖ s) with C_K the context of the top-K sources;
    returns (drop [S, T] with NaN rows for the pruned sources, pruned indices). Cost K + 1 target passes.
    """
    keep = top_k_indices(proxy_scores, top_k)
    pruned = [i for i in range(len(fine)) if i not in set(keep)]
    _, drop = loo(target_scorer, fine, base_drop=pruned, candidates=keep)
    return drop, pruned

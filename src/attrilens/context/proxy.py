"""The proxy model's side of proxy LOO and proxy pruning: the response as its tokens, and its drops."""

from __future__ import annotations

import torch

from attrilens.context.run import AttributionRun, SourceDrops
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.spans import Sources


def same_tokenizer(a: LM, b: LM) -> bool:
    """True when both models map text to the same ids (same vocabulary and special tokens)."""
    ta, tb = a.tokenizer, b.tokenizer
    if ta is tb:  # an early-exit proxy shares its target's tokenizer
        return True
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


def proxy_drops(run: AttributionRun, inner: SourceDrops, sources: Sources) -> tuple[torch.Tensor, list[int]]:
    """`inner`'s drops [S, T_proxy] computed by the proxy model (its own scorer and cost), and its response ids.

    Records `details["proxy_response_ids"]` and `details["retokenised"]`.
    """
    pids = proxy_response_ids(run.lm, run.proxy, run.response, run.response_ids)
    run.details["proxy_response_ids"] = pids
    run.details["retokenised"] = pids != run.response_ids
    return inner(run.scorer(run.proxy, pids, run.proxy_cost), sources), pids

"""Attention knockout against its ground truth: a full forward whose mask hides a source from the response only."""

from __future__ import annotations

import os

import pytest
import torch

from attrilens.context import ContextAttributor, ContextResult
from attrilens.context.scorers import token_logprobs
from attrilens.context.token_sources import prompt_token_owner
from attrilens.lm import LM
from attrilens.spans import Sources
from attrilens.testing import ARCHS, random_context, tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _mask(lm: LM, length: int, first_query: int, hidden: list[int], window: int | None) -> torch.Tensor:
    """[1, 1, L, L] additive mask: causal (and windowed), queries from `first_query` on cannot see `hidden`."""
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))
    if window:
        idx = torch.arange(length)
        allowed &= (idx[:, None] - idx[None, :]) < window
    allowed[first_query:, hidden] = False
    mask = torch.zeros(1, 1, length, length)
    mask[0, 0][~allowed] = torch.finfo(torch.float32).min
    return mask.to(lm.device)


def _hidden_logprobs(lm: LM, prompt: list[int], response: list[int], hidden: list[int]) -> torch.Tensor:
    """log p of the response from one full forward, the response's positions blind to `hidden` prompt tokens."""
    full = prompt + response
    n, length = len(prompt), len(full)
    mask = _mask(lm, length, n - 1, hidden, None)
    if lm.sliding_window is not None:  # Gemma-3: one mask per attention kind
        mask = {"full_attention": mask, "sliding_attention": _mask(lm, length, n - 1, hidden, lm.sliding_window)}
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([full], device=lm.device), attention_mask=mask,
                       position_ids=torch.arange(length, device=lm.device)[None])
    return token_logprobs(out.logits[0, n - 1 : length - 1], response)


@pytest.mark.parametrize("arch", ARCHS)
def test_knockout_equals_a_masked_full_forward(arch: str):
    """score(s) = Σ_t log p_t(full) − log p_t(response blind to s's tokens), each from an independent full pass."""
    lm = tiny_lm(arch, seed=3 * len(arch) + 1, layers=3)
    context, query, response = random_context(len(arch) + 5), "who founded the bank?", " ada lumen"
    attributor = ContextAttributor(lm, method="knockout", batch_size=3)
    result = attributor.attribute(context, query, response)
    sources = Sources.split(context, "sentence")
    ids, owner = prompt_token_owner(lm, attributor.prompt(query), sources)
    rids = lm.encode_response(response)
    base = _hidden_logprobs(lm, ids, rids, [])
    want = [float((base - _hidden_logprobs(lm, ids, rids, [p for p, o in enumerate(owner) if o == s])).sum())
            for s in range(len(sources))]
    assert max(abs(a - b) for a, b in zip(result.scores, want, strict=True)) <= 1e-4
    assert max(abs(w) for w in want) > 1e-3  # hiding a source really changed the response's log-likelihood
    # one prompt pass and one response row per source, none of them re-running the prompt
    assert result.cost.forward_passes == 1 + len(sources)
    assert result.cost.tokens_computed == len(ids) + len(rids) + len(sources) * len(rids)


def test_knockout_is_not_exact_loo_and_says_so():
    """With more than one layer later context tokens still carry the hidden source: the result names the gap."""
    lm = tiny_lm("llama", seed=23, layers=3)
    context, query, response = random_context(9), "who founded the bank?", " ada lumen"
    ko = ContextAttributor(lm, method="knockout").attribute(context, query, response)
    exact = ContextAttributor(lm, method="cached").attribute(context, query, response)
    assert max(abs(a - b) for a, b in zip(ko.scores, exact.scores, strict=True)) > 1e-4
    assert exact.approximation is None and "knockout" in ko.approximation
    again = ContextResult.from_json(ko.to_json())
    assert again.approximation == ko.approximation and again.scores == ko.scores
    assert ko.for_response_span(0, 4).approximation == ko.approximation


def test_a_source_holding_the_prompts_last_token_is_scored_exactly():
    """The token that predicts the response cannot be hidden from itself: that source is removed instead."""
    lm = tiny_lm("qwen2", seed=29)
    context, query, response = random_context(11), "who founded the bank?", " ada lumen"
    template = "Question: {question}\nContext: {context}"
    ko = ContextAttributor(lm, method="knockout", template=template).attribute(context, query, response)
    exact = ContextAttributor(lm, method="cached", template=template).attribute(context, query, response)
    assert abs(ko.scores[-1] - exact.scores[-1]) <= 1e-4
    assert any(abs(a - b) > 1e-4 for a, b in zip(ko.scores[:-1], exact.scores[:-1], strict=True))


def test_knockout_combines_with_hierarchical_pruning_and_contextcite():
    lm = tiny_lm("llama", seed=31, layers=3)
    context, query, response = random_context(13), "who founded the bank?", " ada lumen"
    r = ContextAttributor(lm, method="knockout+hierarchical", top_k=1).attribute(context, query, response)
    assert r.method == "knockout+hierarchical" and "knockout" in r.approximation
    assert any(s is None for s in r.scores) and any(s is not None for s in r.scores)
    assert r.faithfulness is not None  # the kept context's LL is re-checked exactly (text removal)
    cc = ContextAttributor(lm, method="knockout+contextcite", n_ablations=12).attribute(context, query, response)
    assert cc.cost.tokens_computed < ContextAttributor(lm, method="contextcite", n_ablations=12).attribute(
        context, query, response).cost.tokens_computed

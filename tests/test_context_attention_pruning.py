"""Attention pruning against its ground truth: the attention baseline picks the candidates, exact LOO scores them."""

from __future__ import annotations

import os

import pytest

from attrilens.context import ContextAttributor
from attrilens.context.scorers import CachedScorer, Scorer
from attrilens.errors import AttrilensError
from attrilens.spans import Sources
from attrilens.testing import ARCHS, random_context, tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUERY, RESPONSE = "who founded the bank?", " ada lumen"


@pytest.mark.parametrize("arch", ARCHS)
def test_response_attention_from_the_cache_equals_the_attention_baseline(arch: str):
    """One response row over the cached prompt reads the same attention as a full eager pass (the baseline)."""
    lm = tiny_lm(arch, seed=5 * len(arch) + 2, layers=3)
    context = random_context(len(arch) + 21)
    attributor = ContextAttributor(lm, method="attention")
    baseline = attributor.attribute(context, QUERY, RESPONSE)
    sources = Sources.split(context, "sentence")
    rids = lm.encode_response(RESPONSE)
    before = lm.model.config._attn_implementation
    for cls in (CachedScorer, Scorer):
        mass = cls(lm, attributor.prompt(QUERY), rids).response_attention(sources)
        assert mass.shape == (len(sources), len(rids))
        got = mass.sum(dim=1).tolist()
        assert max(abs(a - b) for a, b in zip(got, baseline.scores, strict=True)) <= 1e-5
    assert lm.model.config._attn_implementation == before  # eager only for those forwards


@pytest.mark.parametrize("scorer", ["cached", "knockout"])
def test_attention_pruning_scores_the_top_k_by_attention_exactly_as_the_unpruned_method(scorer: str):
    lm = tiny_lm("qwen2", seed=37, layers=3)
    context = random_context(41)
    attention = ContextAttributor(lm, method="attention").attribute(context, QUERY, RESPONSE).scores
    full = ContextAttributor(lm, method=scorer).attribute(context, QUERY, RESPONSE)
    pruned = ContextAttributor(lm, method=f"{scorer}+attention-pruning", top_k=2).attribute(context, QUERY, RESPONSE)
    kept = sorted(range(len(attention)), key=lambda i: -attention[i])[:2]
    assert pruned.method == f"{scorer}+attention-pruning"
    assert [i for i, s in enumerate(pruned.scores) if s is not None] == sorted(kept)
    for i in kept:  # scored inside the full context: the unpruned method's own numbers
        assert abs(pruned.scores[i] - full.scores[i]) <= 1e-4
    assert pruned.faithfulness is not None and pruned.faithfulness.kept_sources == sorted(kept)
    assert pruned.details["kept_sources"] == sorted(kept)
    n = len(lm.encode_prompt(ContextAttributor(lm).prompt(QUERY)(context)))
    T = len(lm.encode_response(RESPONSE))
    report = pruned.details.get("faithfulness_tokens", 0)
    if scorer == "knockout":  # base pass, the attention row, one response row per kept source, the report
        assert pruned.cost.tokens_computed == n + T + T + 2 * T + report
    assert pruned.cost.tokens_computed < full.cost.tokens_computed + report


def test_attention_pruning_refuses_hierarchical_and_bad_k():
    lm = tiny_lm("llama", seed=43)
    with pytest.raises(AttrilensError, match="does not combine with hierarchical"):
        ContextAttributor(lm, method="hierarchical+attention-pruning").attribute(random_context(3), QUERY, RESPONSE)
    with pytest.raises(AttrilensError, match="top_k must be at least 1"):
        ContextAttributor(lm, method="attention-pruning", top_k=0)
    with pytest.raises(AttrilensError, match="asks for both"):
        ContextAttributor(lm, method="proxy-pruning+attention-pruning")

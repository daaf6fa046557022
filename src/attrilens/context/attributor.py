"""`ContextAttributor`: which context sources made the model give this response (LOO family and baselines).

A method is one name or a "+"-joined combination of
  loo (exact, no cache) | cached (exact, KV-cached; the default for every LOO combination)
  hierarchical (paragraph LOO → top-K paragraphs → fine LOO inside them)
  proxy (LOO computed by the proxy model) | proxy-pruning (proxy ranks, target confirms its top-K)
  contextcite | attention | gradient (baselines; contextcite may be combined with loo/cached).
E.g. "cached+hierarchical+proxy-pruning": the proxy ranks sentences hierarchically, the target confirms the top-K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attrilens.context import baselines, surrogate
from attrilens.context.hierarchical import hierarchical_loo
from attrilens.context.loo import Scorer, loo, make_scorer
from attrilens.context.proxy import proxy_prune, proxy_response_ids
from attrilens.context.result import ContextResult, SourceScore, additive_rescorer
from attrilens.context.template import PROMPT_TEMPLATE
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.spans import LEVELS, Sources

METHODS = ("loo", "cached", "hierarchical", "proxy", "proxy-pruning", "contextcite", "attention", "gradient")
_BASELINES = ("contextcite", "attention", "gradient")


@dataclass(frozen=True)
class Plan:
    """A parsed method: which engine, whether hierarchical, what the proxy does, which estimator."""

    name: str
    kind: str  # "loo" | "contextcite" | "attention" | "gradient"
    cached: bool
    hierarchical: bool
    proxy: str | None  # None | "scores" | "prune"


def parse_method(method: str) -> Plan:
    """Parse "cached+hierarchical+proxy-pruning"-style method names (see module docstring)."""
    parts = [p.strip().lower() for p in str(method).split("+") if p.strip()]
    bad = [p for p in parts if p not in METHODS and p != "naive"]
    if not parts or bad:
        raise AttrilensError(
            f"Unknown method {method!r}. Choose one of {', '.join(METHODS)} or join LOO options with '+' "
            "(e.g. cached+hierarchical+proxy-pruning)."
        )
    kinds = [p for p in parts if p in _BASELINES]
    proxy = [p for p in parts if p in ("proxy", "proxy-pruning")]
    if len(kinds) > 1 or len(proxy) > 1:
        raise AttrilensError(f"Method {method!r} names two estimators; pick one of {', '.join(_BASELINES)} / proxy modes.")
    kind = kinds[0] if kinds else "loo"
    naive = "loo" in parts or "naive" in parts
    if naive and "cached" in parts:
        raise AttrilensError(f"Method {method!r} asks for both naive (loo) and cached passes; pick one.")
    hierarchical = "hierarchical" in parts
    if kind != "loo" and (hierarchical or proxy):
        raise AttrilensError(f"{kind} cannot be combined with hierarchical or proxy; use it alone.")
    if kind in ("attention", "gradient") and len(parts) > 1:
        raise AttrilensError(f"{kind} runs one pass and takes no options; use method={kind!r} alone.")
    cached = kind in ("loo", "contextcite") and not naive
    mode = {"proxy": "scores", "proxy-pruning": "prune"}[proxy[0]] if proxy else None
    if kind in ("attention", "gradient"):
        name = kind
    else:
        name = "+".join([*(["cached"] if cached else ["loo"] if kind == "loo" else ["naive"]),
                         *(["hierarchical"] if hierarchical else []), *proxy, *kinds])
    return Plan(name, kind, cached, hierarchical, mode)


def response_token_offsets(lm: LM, ids: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) characters of each response token in the decoded response."""
    out, prev = [], 0
    for t in range(len(ids)):
        cur = len(lm.tokenizer.decode(list(ids[: t + 1]), clean_up_tokenization_spaces=False))
        out.append((prev, max(prev, cur)))
        prev = max(prev, cur)
    return out


class ContextAttributor:
    """Attribute a response to context sources with one method (see module docstring for method names)."""

    def __init__(self, lm: LM, proxy: LM | None = None, *, method: str = "cached", level: str = "sentence",
                 top_k: int = 3, paragraph_k: int | None = None, batch_size: int = 8, n_ablations: int = 64,
                 seed: int = 0, alpha: float = 0.01, template: str = PROMPT_TEMPLATE, max_new_tokens: int = 32):
        self.plan = parse_method(method)
        if level not in LEVELS:
            raise AttrilensError(f"Unknown level {level!r}. Choose one of {', '.join(LEVELS)}.")
        if self.plan.hierarchical and level == "paragraph":
            raise AttrilensError("Hierarchical LOO refines paragraphs into sentences or words; pass level='sentence'.")
        if self.plan.proxy and proxy is None:
            raise AttrilensError(f"Method {method!r} needs a proxy model. Pass proxy=LM(...) (CLI: --proxy DIR).")
        for name, value in (("top_k", top_k), ("batch_size", batch_size), ("n_ablations", n_ablations)):
            if int(value) < 1:
                raise AttrilensError(f"{name} must be at least 1, got {value}.")
        if paragraph_k is not None and paragraph_k < 1:
            raise AttrilensError(f"paragraph_k must be at least 1, got {paragraph_k}.")
        if "{context}" not in template or "{question}" not in template:
            raise AttrilensError("The prompt template must contain {context} and {question}. Fix the template.")
        self.lm, self.proxy = lm, proxy
        self.level, self.top_k, self.paragraph_k = level, int(top_k), paragraph_k
        self.batch_size, self.n_ablations, self.seed, self.alpha = int(batch_size), int(n_ablations), seed, alpha
        self.template, self.max_new_tokens = template, max_new_tokens

    @property
    def method(self) -> str:
        return self.plan.name

    def sources(self, context: str, spans: Sequence[tuple[int, int]] | None = None) -> Sources:
        """The sources of a context at this attributor's level (or the given spans); at least two are needed."""
        src = Sources.from_spans(context, spans) if spans is not None else Sources.split(context, self.level)
        if len(src) < 2:
            raise AttrilensError(
                f"The context splits into {len(src)} {src.level} source; attribution needs at least two. "
                "Use a finer --level (sentence or word) or pass more text."
            )
        return src

    def prompt(self, query: str):
        """The function context -> prompt text for this query."""
        return lambda context: self.template.format(context=context, question=query)

    def generate(self, context: str, query: str) -> str:
        """The model's greedy response to the full prompt (stops at a newline)."""
        text = self.lm.generate(self.prompt(query)(context), max_new_tokens=self.max_new_tokens, seed=self.seed)
        if not text.strip():
            raise AttrilensError("The model generated an empty response. Pass the response to explain (--response).")
        return text

    def attribute(self, context: str, query: str, response: str | None = None,
                  spans: Sequence[tuple[int, int]] | None = None) -> ContextResult:
        """Score every source of `context` for the (given or generated) response to `query`."""
        if not isinstance(query, str) or not query.strip():
            raise AttrilensError("The query is empty. Pass the question the response answers (--query).")
        if not isinstance(context, str) or not context.strip():
            raise AttrilensError("The context is empty. Pass a non-empty context (--context-file).")
        src = self.sources(context, spans)
        details: dict = {}
        if response is None:
            response = self.generate(context, query)
            details["generated"] = True
        prompt = self.prompt(query)
        rids = self.lm.encode_response(response)
        self.lm.check_length(len(self.lm.encode_prompt(prompt(context))) + len(rids))
        target_cost, proxy_cost = Cost(), Cost()
        plan = self.plan
        offsets_lm = self.lm
        if plan.kind == "attention":
            contrib = baselines.attention_scores(self.lm, prompt, src, rids, target_cost)
            scores, rescorer = None, additive_rescorer(contrib)
        elif plan.kind == "gradient":
            contrib = baselines.gradient_scores(self.lm, prompt, src, rids, target_cost)
            scores, rescorer = None, additive_rescorer(contrib)
        elif plan.kind == "contextcite":
            scorer = make_scorer(self.lm, prompt, rids, cached=plan.cached, batch_size=self.batch_size, cost=target_cost)
            scores, rescorer = surrogate.contextcite(scorer, src, n_ablations=self.n_ablations, seed=self.seed,
                                                     alpha=self.alpha)
        else:
            contrib, offsets_lm = self._loo_family(src, prompt, response, rids, target_cost, proxy_cost, details)
            scores, rescorer = None, additive_rescorer(contrib)
        if scores is None:
            scores = rescorer(range(contrib.shape[1]))
        out_ids = rids if offsets_lm is self.lm else details["proxy_response_ids"]
        cost = Cost(target_cost.forward_passes + proxy_cost.forward_passes,
                    target_cost.tokens_computed + proxy_cost.tokens_computed, target_cost.seconds + proxy_cost.seconds)
        details.update(target_cost=target_cost.to_dict(), proxy_cost=proxy_cost.to_dict(),
                       flops_proxy=target_cost.tokens_computed * self.lm.n_params()
                       + (proxy_cost.tokens_computed * self.proxy.n_params() if self.proxy is not None else 0),
                       pruned=[i for i, v in enumerate(scores) if v is None])
        sources = [SourceScore(s.index, s.text, s.start, s.end, s.level, v) for s, v in zip(src, scores, strict=True)]
        return ContextResult(plan.name, query, response, sources, cost,
                             token_offsets=response_token_offsets(offsets_lm, out_ids), rescorer=rescorer,
                             details=details)

    def _scorer(self, lm: LM, prompt, rids: Sequence[int], cost: Cost) -> Scorer:
        return make_scorer(lm, prompt, rids, cached=self.plan.cached, batch_size=self.batch_size, cost=cost)

    def _loo_family(self, src: Sources, prompt, response: str, rids: list[int], target_cost: Cost, proxy_cost: Cost,
                    details: dict) -> tuple[torch.Tensor, LM]:
        """Per-token drop [S, T] for the LOO combinations, and the model whose tokens T counts."""
        plan = self.plan
        if plan.proxy is None:
            return self._loo_or_hierarchical(self._scorer(self.lm, prompt, rids, target_cost), src, details,
                                             self.top_k), self.lm
        pids = proxy_response_ids(self.lm, self.proxy, response, rids)
        details["proxy_response_ids"] = pids
        details["retokenised"] = pids != rids
        proxy_scorer = self._scorer(self.proxy, prompt, pids, proxy_cost)
        k_par = self.paragraph_k or self.top_k
        proxy_drop = self._loo_or_hierarchical(proxy_scorer, src, details, k_par)
        if plan.proxy == "scores":
            return proxy_drop, self.proxy
        drop, pruned = proxy_prune(self._scorer(self.lm, prompt, rids, target_cost), src, proxy_drop.sum(dim=1),
                                   self.top_k)
        details["proxy_scores"] = [None if torch.isnan(v) else float(v) for v in proxy_drop.sum(dim=1)]
        return drop, self.lm

    def _loo_or_hierarchical(self, scorer: Scorer, src: Sources, details: dict, k: int) -> torch.Tensor:
        if not self.plan.hierarchical:
            return loo(scorer, src)[1]
        paragraphs = Sources.split(src.context, "paragraph")
        drop, h = hierarchical_loo(scorer, paragraphs, src, k)
        details.update(paragraph_scores=h.paragraph_scores, kept_paragraphs=h.kept_paragraphs)
        return drop

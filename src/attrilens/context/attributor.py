"""`ContextAttributor`: which context sources made the model give this response.

A method is one estimator of `CONTEXT_METHODS` (loo, contextcite, attention, gradient, or a registered one)
with wrappers of `CONTEXT_WRAPPERS` joined by "+" (naive|cached, hierarchical, proxy|proxy-pruning); see
`attrilens.context.spec` for the grammar. E.g. "cached+hierarchical+proxy-pruning": the proxy ranks sentences
hierarchically, the target confirms the top-K. The attributor builds one `Pipeline` from the name and runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from attrilens.context.faithfulness import Faithfulness
from attrilens.context.pipeline import Pipeline
from attrilens.context.result import ContextResult, SourceScore
from attrilens.context.run import AttributionRun
from attrilens.context.scorers import Scorer
from attrilens.context.spec import parse_method
from attrilens.context.template import PROMPT_TEMPLATE, check_template
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.spans import LEVELS, Sources


def response_token_offsets(lm: LM, ids: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) characters of each response token in the decoded response."""
    out, prev = [], 0
    for t in range(len(ids)):
        cur = len(lm.tokenizer.decode(list(ids[: t + 1]), clean_up_tokenization_spaces=False))
        out.append((prev, max(prev, cur)))
        prev = max(prev, cur)
    return out


class ContextAttributor:
    """Attribute a response to context sources with one method (see the module docstring for method names).

    `top_k`, `paragraph_k`, `n_ablations`, `alpha` and any `**method_options` go to the options of the method's
    estimator and wrappers that take them; a non-default value the method does not take is an error. `seed`
    seeds generation and, for methods that take it, their sampling. `level`, `batch_size`, `template` and
    `max_new_tokens` are the attributor's own.
    """

    def __init__(self, lm: LM, proxy: LM | None = None, *, method: str = "cached", level: str = "sentence",
                 top_k: int = 3, paragraph_k: int | None = None, batch_size: int = 8, n_ablations: int = 64,
                 seed: int = 0, alpha: float = 0.01, template: str = PROMPT_TEMPLATE, max_new_tokens: int = 32,
                 **method_options: Any):
        self.spec = parse_method(method)
        if level not in LEVELS:
            raise AttrilensError(f"Unknown level {level!r}. Choose one of {', '.join(LEVELS)}.")
        options = dict(top_k=top_k, paragraph_k=paragraph_k, n_ablations=n_ablations, alpha=alpha, **method_options)
        self.pipeline = Pipeline(self.spec, options, run_values={"seed": seed})
        self.pipeline.check(level)
        if self.pipeline.needs_proxy and proxy is None:
            raise AttrilensError(f"Method {method!r} needs a proxy model. Pass proxy=LM(...) (CLI: --proxy DIR).")
        for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
            if int(value) < 1:
                raise AttrilensError(f"{name} must be at least 1, got {value}. Pass --{name.replace('_', '-')} 1 or more.")
        self.lm, self.proxy = lm, proxy
        self.level, self.batch_size, self.seed = level, int(batch_size), seed
        self.template, self.max_new_tokens = check_template(template), int(max_new_tokens)

    @property
    def method(self) -> str:
        """The canonical method name (recorded in results)."""
        return self.spec.name

    def sources(self, context: str, spans: Sequence[tuple[int, int]] | None = None) -> Sources:
        """The sources of a context at this attributor's level (or the given spans); at least two are needed."""
        src = Sources.from_spans(context, spans) if spans is not None else Sources.split(context, self.level)
        if len(src) < 2:
            raise AttrilensError(
                f"The context splits into {len(src)} {src.level} source; attribution needs at least two. "
                "Use a finer --level (sentence or word) or pass more text."
            )
        return src

    def prompt(self, query: str) -> Callable[[str], str]:
        """The function context -> prompt text for this query."""
        return lambda context: self.template.format(context=context, question=query)

    def generate(self, context: str, query: str) -> str:
        """The model's greedy response to the full prompt (stops at a newline; at most max_new_tokens tokens)."""
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
        if response is not None and not response.strip():
            raise AttrilensError("The response is empty or only whitespace. Pass the text to explain (--response), "
                                 "or leave it out to explain the model's own answer.")
        src = self.sources(context, spans)
        details: dict[str, Any] = {}
        if response is None:
            response = self.generate(context, query)
            details["generated"] = True
        prompt = self.prompt(query)
        rids = self.lm.encode_response(response)
        self.lm.check_length(len(self.lm.encode_prompt(prompt(context))) + len(rids))
        run = AttributionRun(self.lm, self.proxy, prompt, src, response, rids, batch_size=self.batch_size,
                             scorer_class=self.pipeline.scorer_class, details=details)
        estimate = self.pipeline.run(run)
        faithfulness = self.faithfulness(run, estimate.scores)
        target_cost, proxy_cost = run.cost, run.proxy_cost
        cost = Cost(target_cost.forward_passes + proxy_cost.forward_passes,
                    target_cost.tokens_computed + proxy_cost.tokens_computed, target_cost.seconds + proxy_cost.seconds)
        details.update(target_cost=target_cost.to_dict(), proxy_cost=proxy_cost.to_dict(),
                       flops_proxy=target_cost.tokens_computed * self.lm.n_params()
                       + (proxy_cost.tokens_computed * self.proxy.n_params() if self.proxy is not None else 0),
                       pruned=[i for i, v in enumerate(estimate.scores) if v is None])
        sources = [SourceScore(s.index, s.text, s.start, s.end, s.level, v)
                   for s, v in zip(src, estimate.scores, strict=True)]
        token_lm = run.token_lm if run.token_lm is not None else self.lm
        token_ids = run.token_ids if run.token_ids is not None else rids
        return ContextResult(self.spec.name, query, response, sources, cost,
                             token_offsets=response_token_offsets(token_lm, token_ids), rescorer=estimate.rescorer,
                             details=details, faithfulness=faithfulness,
                             approximation="; ".join(self.pipeline.approximations()) or None)

    def faithfulness(self, run: AttributionRun, scores: list[float | None]) -> Faithfulness:
        """LL(r | full context), LL(r | the kept context) and, when pruned, LL(r | no context) under the target.

        The full and kept contexts usually were base passes of the run already (reused); what a pruned result
        misses (proxy pruning never runs the full context; no method runs the empty one) runs now, in one batch,
        counted in the target's cost (`details["faithfulness_passes"]`). Unpruned results report what their passes
        computed (None for one-pass baselines and proxy scores).
        """
        kept = [i for i, v in enumerate(scores) if v is not None]
        pruned = [i for i, v in enumerate(scores) if v is None]
        full_context = run.sources.context
        known = run.target_logprobs
        per_token = run.token_lm is None or list(run.token_ids or []) == list(run.response_ids)
        if not pruned:
            full = known.get(full_context)
            full = full.tolist() if full is not None and per_token else None
            return Faithfulness.from_tokens(full, full, kept, len(scores))
        contexts = (full_context, run.sources.ablate(pruned), run.sources.ablate(range(len(scores))))
        missing = [c for c in dict.fromkeys(contexts) if c not in known]
        tokens_before = run.cost.tokens_computed
        if missing:
            scorer = Scorer(self.lm, run.prompt, run.response_ids, batch_size=self.batch_size, cost=run.cost)
            for c, lp in zip(missing, scorer.score(missing), strict=True):
                known[c] = lp
        run.details["faithfulness_passes"] = len(missing)
        run.details["faithfulness_tokens"] = run.cost.tokens_computed - tokens_before
        full, kept_lp, empty = (known[c].tolist() for c in contexts)
        return Faithfulness.from_tokens(full, kept_lp, kept, len(scores), empty)

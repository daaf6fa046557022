"""One episode under every setting: exact LOO as the ground truth, then each setting's (or peer's) scores with
their faithfulness metrics and costs, and the top-k log-prob drop under the target."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from attrilens.bench.context.episodes import is_correct, respond
from attrilens.bench.context.settings import PEERS, Setting
from attrilens.context import ContextAttributor
from attrilens.context.peers import PeerResult, PeerUnavailable, captum_loo, contextcite_package
from attrilens.context.scorers import CachedScorer
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.metrics import average_precision, gold_hit, loo_outliers, ranking, spearman
from attrilens.spans import Sources


def run_peer(s: Setting, target: LM, attributor: ContextAttributor, context: str, query: str,
             response: str) -> PeerResult:
    """One peer row: captum's naive LOO or the context-cite package, on the attributor's prompt and sources."""
    src = attributor.sources(context)
    if s.peer == "captum":
        return captum_loo(target, attributor.prompt(query), src, target.encode_response(response))
    if s.peer == "context-cite":
        return contextcite_package(target, attributor.template, query, src, response,
                                   n_ablations=int(s.options["n_ablations"]), batch_size=attributor.batch_size)
    raise AttrilensError(f"Unknown peer {s.peer!r}; choose one of {', '.join(PEERS)}.")


def as_proxies(proxy: LM | Mapping[str | None, LM] | None) -> dict[str | None, LM]:
    """Proxies by the label settings use (a single LM is the unlabelled proxy)."""
    if proxy is None:
        return {}
    return dict(proxy) if isinstance(proxy, Mapping) else {None: proxy}


def evaluate_episode(target: LM, proxy: LM | Mapping[str | None, LM] | None, episode: dict, settings: list[Setting],
                     batch_size: int = 8, response: str | None = None, gen_seconds: float | None = None) -> dict:
    """All settings on one episode: the response (generated if not given), the exact LOO scores, and per-setting
    metrics and costs. Settings whose proxy or peer is missing are skipped (recorded under "skipped")."""
    proxies = as_proxies(proxy)
    context, query = episode["context"], episode["question"]
    base = ContextAttributor(target, batch_size=batch_size, max_new_tokens=8)
    if response is None:
        response, gen_seconds = respond(target, episode)
    results, skipped = {}, {}
    for s in settings:
        if s.needs_proxy and s.proxy not in proxies:
            skipped[s.label] = "no proxy"
            continue
        if s.peer is not None:
            try:
                p = run_peer(s, target, base, context, query, response)
            except PeerUnavailable as exc:
                skipped[s.label] = str(exc)
                continue
            results[s.label] = (p.scores, p.seconds, p.forward_passes, p.tokens, p.tokens * target.n_params(), None,
                                p.details)
            continue
        p_lm = proxies.get(s.proxy) if s.needs_proxy else None
        attributor = ContextAttributor(target, p_lm, method=s.method, batch_size=batch_size, **s.options)
        t0 = time.perf_counter()
        r = attributor.attribute(context, query, response)
        seconds = time.perf_counter() - t0
        report_flops = r.details.get("faithfulness_tokens", 0) * target.n_params()
        results[s.label] = (r.scores, seconds, r.cost.forward_passes, r.cost.tokens_computed, r.details["flops_proxy"],
                            r.faithfulness, {"report_flops": report_flops} if report_flops else {})
    exact = results[settings[0].label][0]
    outliers = loo_outliers(exact)
    src = Sources.split(context, "sentence")
    # top-k log-prob drop under the target for every setting's top-k sources (not part of any method's cost)
    scorer = CachedScorer(target, base.prompt(query), target.encode_response(response), batch_size=batch_size)
    full = float(scorer.base(context).sum())
    wanted = {(label, k): tuple(sorted(ranking(res[0])[:k])) for label, res in results.items() for k in (1, 3)}
    unique = list(dict.fromkeys(wanted.values()))  # settings often agree on their top sources: score each set once
    lls = dict(zip(unique, scorer.score([src.ablate(drop) for drop in unique]).sum(dim=1).tolist(), strict=True))
    drops = {key: full - lls[drop] for key, drop in wanted.items()}
    rows = {}
    for s in settings:
        if s.label not in results:
            continue
        scores, seconds, passes, tokens, flops, faith, details = results[s.label]
        report_flops = details.pop("report_flops", 0)
        ref = results.get(s.reference, (None,))[0] if s.reference else exact
        rows[s.label] = {
            "ap": average_precision(scores, outliers), "spearman": spearman(scores, exact),
            "drop1": drops[(s.label, 1)], "drop3": drops[(s.label, 3)],
            "hit1": gold_hit(scores, episode["gold_sentence"]),
            "passes": passes, "tokens": tokens, "flops": flops, "report_flops": report_flops, "seconds": seconds,
            "max_abs_diff": _max_abs_diff(scores, ref),
            "pruned": bool(faith is not None and faith.pruned),
            "unsupported": bool(faith is not None and faith.supported is False),
            "ll_lost": (faith.ll_full - faith.ll_kept) if faith is not None and faith.pruned
            and faith.ll_full is not None and faith.ll_kept is not None else math.nan,
            **({"peer_checks": details} if details else {}),
        }
    return {"id": episode["id"], "response": response, "correct": is_correct(response, episode["answer"]),
            "n_sources": len(src), "n_outliers": len(outliers), "gen_seconds": gen_seconds, "ll_full": full,
            "rows": rows, "skipped": skipped}


def _max_abs_diff(scores: Sequence[float | None], reference: Sequence[float | None] | None) -> float:
    """max |score − reference| over the sources both scored (NaN without a reference or a common source)."""
    if reference is None:
        return math.nan
    diffs = [abs(a - b) for a, b in zip(scores, reference, strict=True) if a is not None and b is not None]
    return max(diffs) if diffs else math.nan

"""`attrilens bench context`: every method against exact target LOO on held-out reading episodes of the world.

First the target answers held-out episodes greedily (timed; the response is cut after its first sentence), which
counts how many it answers; then, on the answered ones, naive exact LOO gives the ground truth and every setting
is scored for faithfulness (outlier mAP, Spearman, top-k log-prob drop, gold hit@1, how often a pruned context
stops supporting the response) and cost (forward passes, tokens, tokens × non-embedding parameters, wall time),
each cost as a ratio to naive LOO in the same run. Peers (captum's FeatureAblation, the context-cite package) are
rows of the same run when installed; several proxies (e.g. early-exit:K at several K) give one set of rows each.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attrilens.bench.report import Report, machine
from attrilens.context import CONTEXT_METHODS, ContextAttributor, ContextMethod, parse_method
from attrilens.context.peers import PeerResult, PeerUnavailable, captum_loo, contextcite_package
from attrilens.context.scorers import CachedScorer
from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.metrics import average_precision, gold_hit, loo_outliers, ranking, spearman
from attrilens.spans import Sources
from attrilens.workflows.world import split_sentences

PEERS = ("captum", "context-cite")


@dataclass
class Setting:
    """One row of the table: a label, a method name and its options; which proxy it runs (a key of the run's
    proxies) or which peer package computes it; `reference`: the row whose scores it must equal (max |Δ| is
    reported)."""

    label: str
    method: str
    options: dict = field(default_factory=dict)
    proxy: str | None = None
    peer: str | None = None
    reference: str | None = None

    @property
    def needs_proxy(self) -> bool:
        """Whether the method runs a proxy model (the row is skipped without one)."""
        return self.peer is None and parse_method(self.method).proxy is not None


# Table labels that differ from the registered name (kept so that tables compare with earlier runs).
LABELS = {"gradient": "gradient-norm"}
NAIVE, CACHED = "loo (naive, exact)", "cached (exact)"
QUICK = {NAIVE, CACHED, "hierarchical K=2", "knockout", "knockout+attention-pruning K=3", "proxy-pruning K=3",
         "hier+proxy-pruning K=3", "contextcite n=16"}


def proxy_settings(proxy: str | None, suffix: str, *, pruning_k: Sequence[int] = (3, 5),
                   hier_k: Sequence[tuple[int, int]] = ((3, 3), (5, 4))) -> list[Setting]:
    """The rows that run one proxy: proxy scores, proxy pruning, hierarchical + proxy pruning."""
    return [
        Setting(f"proxy{suffix}", "proxy", proxy=proxy),
        *(Setting(f"proxy-pruning K={k}{suffix}", "proxy-pruning", {"top_k": k}, proxy=proxy) for k in pruning_k),
        *(Setting(f"hier+proxy-pruning K={k}{suffix}", "hierarchical+proxy-pruning", {"top_k": k, "paragraph_k": p},
                  proxy=proxy) for k, p in hier_k),
    ]


def default_settings(quick: bool = False, proxies: Sequence[str] | None = None, *, peers: bool = False,
                     contextcite_n: Sequence[int] = (8, 16, 32, 64)) -> list[Setting]:
    """The methods and settings compared (naive LOO, the ground truth and cost baseline, comes first).

    The LOO family and ContextCite rows sweep their options; with several `proxies` (labels) each gets its rows,
    labelled "[proxy]", with fewer K values; every registered one-pass estimator (one that uses no scorer:
    attention, gradient, ...) gets one row, in the quick run too. `peers` adds captum's naive LOO (which must
    equal ours) and the context-cite package at the largest ContextCite n (which must equal our row at that n).
    """
    one_pass = [Setting(LABELS.get(name, name), name) for name, cls in CONTEXT_METHODS.items() if not cls.takes_scorer()]
    proxies = list(proxies) if proxies else [None]
    if len(proxies) == 1:
        proxy_rows = proxy_settings(proxies[0], "")
    else:
        proxy_rows = [s for p in proxies for s in proxy_settings(p, f" [{p}]", pruning_k=(3,), hier_k=((3, 3),))]
    s = [
        Setting(NAIVE, "loo"),
        Setting(CACHED, "cached", reference=NAIVE),
        *(Setting(f"hierarchical K={k}", "hierarchical", {"top_k": k}) for k in (2, 4)),
        Setting("knockout", "knockout"),
        Setting("knockout+hierarchical K=2", "knockout+hierarchical", {"top_k": 2}),
        *(Setting(f"attention-pruning K={k}", "attention-pruning", {"top_k": k}) for k in (3, 5)),
        *(Setting(f"knockout+attention-pruning K={k}", "knockout+attention-pruning", {"top_k": k}) for k in (3, 5)),
        *proxy_rows,
        *(Setting(f"contextcite n={n}", "naive+contextcite", {"n_ablations": n}) for n in contextcite_n),
    ]
    if quick:
        s = [x for x in s if x.label in QUICK or (len(proxies) > 1 and x.label.startswith("proxy-pruning K=3"))]
    if peers:
        n = max(int(x.options["n_ablations"]) for x in s if x.method == "naive+contextcite")
        s += [Setting("captum FeatureAblation (naive LOO)", "loo", peer="captum", reference=NAIVE),
              Setting(f"context-cite package n={n}", "contextcite", {"n_ablations": n}, peer="context-cite",
                      reference=f"contextcite n={n}")]
    return s + one_pass


def is_correct(response: str, answer: str) -> bool:
    """Whether the response gives the episode's answer: the answer appears in it as a whole word (case-sensitive).

    A chat model answers in a sentence ("The capital of Kebir is Kaper."); the demo reader answers " Kaper".
    """
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", response) is not None


def first_sentence(text: str) -> str:
    """The text up to and including its first sentence end ('.', '!' or '?' before whitespace), else all of it."""
    match = re.search(r"[.!?](?=\s)", text)
    return text[: match.end()] if match else text


def _fits(lm: LM, episode: dict, room: int = 12) -> bool:
    """Whether the episode's prompt plus `room` response tokens fits in the model's context."""
    prompt = ContextAttributor(lm).prompt(episode["question"])(episode["context"])
    try:
        lm.check_length(len(lm.encode_prompt(prompt)) + room)
    except AttrilensError:
        return False
    return True


def load_episodes(world: Path, n: int | None, min_sentences: int = 20, lm: LM | None = None,
                  room: int = 12) -> list[dict]:
    """The first n held-out episodes with at least `min_sentences` sentences (that fit `lm`'s context with `room`
    response tokens, if given); n=None: all of them."""
    rows = [e for e in load_jsonl(Path(world) / "episodes.jsonl", require=("context", "question", "answer"))
            if e.get("split") == "heldout" and len(split_sentences(e["context"])) >= min_sentences
            and (lm is None or _fits(lm, e, room))]
    if n is not None and len(rows) < n:
        raise AttrilensError(f"{world} has only {len(rows)} held-out episodes with >= {min_sentences} sentences; "
                             f"pass --episodes {len(rows)} or a larger world.")
    return rows if n is None else rows[:n]


def respond(lm: LM, episode: dict, max_new_tokens: int = 8) -> tuple[str, float]:
    """The target's greedy response to the episode (its first sentence; the gold answer if empty) and the seconds
    generation took."""
    prompt = ContextAttributor(lm).prompt(episode["question"])(episode["context"])
    t0 = time.perf_counter()
    response = first_sentence(lm.generate(prompt, max_new_tokens=max_new_tokens))
    seconds = time.perf_counter() - t0
    return (response if response.strip() else f" {episode['answer']}"), seconds


def screen(lm: LM, episodes: Sequence[dict], max_new_tokens: int = 8) -> list[dict]:
    """Each episode's greedy response, whether it gives the answer, and the generation time."""
    from tqdm import tqdm

    out = []
    for e in tqdm(episodes, desc="greedy answers", file=sys.stderr):
        response, seconds = respond(lm, e, max_new_tokens)
        out.append({"id": e["id"], "response": response, "correct": is_correct(response, e["answer"]),
                    "gen_seconds": seconds})
    return out


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


def _as_proxies(proxy: LM | Mapping[str | None, LM] | None) -> dict[str | None, LM]:
    """Proxies by the label settings use (a single LM is the unlabelled proxy)."""
    if proxy is None:
        return {}
    return dict(proxy) if isinstance(proxy, Mapping) else {None: proxy}


def evaluate_episode(target: LM, proxy: LM | Mapping[str | None, LM] | None, episode: dict, settings: list[Setting],
                     batch_size: int = 8, response: str | None = None, gen_seconds: float | None = None) -> dict:
    """All settings on one episode: the response (generated if not given), the exact LOO scores, and per-setting
    metrics and costs. Settings whose proxy or peer is missing are skipped (recorded under "skipped")."""
    proxies = _as_proxies(proxy)
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


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarise(episodes: list[dict], settings: list[Setting]) -> list[dict]:
    """One aggregate row per setting: mean metrics and cost ratios against naive LOO (sums over episodes)."""
    base = settings[0].label
    totals = {k: sum(e["rows"][base][k] for e in episodes) for k in ("passes", "tokens", "flops", "seconds")}
    gen = sum(e["gen_seconds"] for e in episodes)
    out = []
    for s in settings:
        rows = [e["rows"][s.label] for e in episodes if s.label in e["rows"]]
        if not rows:
            continue
        out.append({
            "setting": s.label, "method": s.method if s.peer is None else f"peer:{s.peer}", "peer": s.peer,
            "reference": s.reference,
            "mAP": _mean([r["ap"] for r in rows]), "spearman": _mean([r["spearman"] for r in rows]),
            "drop@1": _mean([r["drop1"] for r in rows]), "drop@3": _mean([r["drop3"] for r in rows]),
            "hit@1": _mean([r["hit1"] for r in rows]),
            "passes": _mean([r["passes"] for r in rows]),
            **{f"{k}_ratio": sum(r[k] for r in rows) / totals[k] for k in ("passes", "tokens", "flops", "seconds")},
            # without the faithfulness report's extra passes (LL under the full and the empty context)
            "flops_ratio_core": sum(r["flops"] - r.get("report_flops", 0) for r in rows) / totals["flops"],
            "attr_over_gen": sum(r["seconds"] for r in rows) / gen if gen else math.nan,
            "max_abs_diff": float(np.nanmax([r["max_abs_diff"] for r in rows]))
            if any(not math.isnan(r["max_abs_diff"]) for r in rows) else math.nan,
            "unsupported": float(np.mean([r["unsupported"] for r in rows])) if any(r["pruned"] for r in rows)
            else math.nan,
            "ll_lost": _mean([r["ll_lost"] for r in rows]),
        })
    return out


def settings_table(summary: list[dict]) -> pd.DataFrame:
    """One row per setting: faithfulness to exact LOO and cost ratios against naive LOO."""
    return pd.DataFrame([{
        "setting": r["setting"], "method": r["method"], "mAP": r["mAP"], "Spearman": r["spearman"],
        "drop@1": r["drop@1"], "drop@3": r["drop@3"], "hit@1": r["hit@1"], "unsupported": r.get("unsupported"),
        "passes": r["passes"], "passes×": r["passes_ratio"], "tokens×": r["tokens_ratio"], "FLOPs×": r["flops_ratio"],
        "FLOPs× w/o report": r.get("flops_ratio_core"),
        "time×": r["seconds_ratio"], "attr/gen": r["attr_over_gen"],
    } for r in summary])


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(summary: list[dict]) -> str:
    """The settings table as compact markdown with fixed precision (the format docs/benchmarks.md shows)."""
    head = ("| setting | mAP | Spearman | drop@1 | drop@3 | hit@1 | unsupported | passes | passes× | tokens× | FLOPs× "
            "| FLOPs× w/o report | time× | attr/gen |")
    lines = [head, "|" + "---|" * 14]
    for r in summary:
        lines.append(
            f"| {r['setting']} | {_fmt(r['mAP'], '.3f')} | {_fmt(r['spearman'], '.3f')} | {_fmt(r['drop@1'], '.3f')} "
            f"| {_fmt(r['drop@3'], '.3f')} | {_fmt(r['hit@1'], '.2f')} | {_fmt(r.get('unsupported'), '.2f')} "
            f"| {r['passes']:.1f} | {r['passes_ratio']:.3f} | {r['tokens_ratio']:.3f} | {r['flops_ratio']:.4f} "
            f"| {_fmt(r.get('flops_ratio_core'), '.4f')} | {r['seconds_ratio']:.3f} | {_fmt(r['attr_over_gen'], '.2f')} |"
        )
    return "\n".join(lines)


def budget_table(summary: list[dict]) -> pd.DataFrame:
    """At each sampling baseline's budget n (e.g. ContextCite): its mAP vs the best LOO-family setting within n passes.

    LOO family = settings whose estimator ablates sources; sampling baselines = scorer estimators that do not.
    Peer rows are left out (they are checked against their reference row instead).
    """
    def estimator(r: dict) -> type[ContextMethod]:
        return parse_method(r["method"]).method_class()

    own = [r for r in summary if not r.get("peer")]
    ours = [r for r in own if estimator(r).ablates_sources]
    rows = []
    for cc in (r for r in own if estimator(r).uses_scorer and not estimator(r).ablates_sources):
        best = max((r for r in ours if r["passes"] <= cc["passes"]), key=lambda r: r["mAP"], default=None)
        rows.append({"budget (passes)": cc["passes"], "baseline": cc["setting"], "baseline mAP": cc["mAP"],
                     "best LOO-family setting within budget": best["setting"] if best else "none",
                     "its passes": best["passes"] if best else math.nan, "its mAP": best["mAP"] if best else math.nan})
    return pd.DataFrame(rows)


def agreement_table(summary: list[dict]) -> pd.DataFrame:
    """Rows that must equal another row (cached vs naive LOO, peers vs ours): max |score difference| over episodes."""
    return pd.DataFrame([{"setting": r["setting"], "must equal": r["reference"], "max |Δ|": r["max_abs_diff"],
                          "time× (vs naive LOO)": r["seconds_ratio"]} for r in summary if r.get("reference")])


def _load(model: LM | Path | str | None) -> tuple[LM, str]:
    from attrilens.demo.paths import demo_model_dir

    if isinstance(model, LM):
        return model, model.name
    path = model if model is not None else demo_model_dir("target")
    return LM.from_pretrained(path), str(path)


def run_benchmark(model: LM | Path | str | None = None, proxy: LM | Path | str | Mapping[str, LM] | None = None,
                  world: Path | None = None, n_episodes: int = 50, quick: bool = False, batch_size: int = 8,
                  threads: int | None = None, n_screen: int | None = None, peers: bool = True,
                  max_new_tokens: int | None = None, contextcite_n: Sequence[int] | None = None) -> Report:
    """Run the benchmark: tables "settings", "agreement" and "budget"; info holds the run's facts and per-episode rows.

    `model`: an LM, a registered name or a directory (default: the demo target, whose proxy is the default).
    `proxy`: an LM, a path, or several proxies by label (e.g. {"early-exit:6": lm.early_exit(6), ...}).
    `n_screen` held-out episodes (default: 2 × n_episodes) are answered greedily (`max_new_tokens`, default 8 for a
    bare prompt, 32 with a chat template); the first `n_episodes` answered ones are attributed by every setting.
    `peers`: add captum and context-cite rows (skipped, and said so, when a package is missing or cannot run).
    """
    import torch
    from tqdm import tqdm

    if threads is not None:
        torch.set_num_threads(threads)

    from attrilens.demo.paths import demo_model_dir, demo_world_dir

    is_demo = model is None
    target_lm, target_name = _load(model)
    world = Path(world) if world is not None else demo_world_dir()
    if proxy is None and is_demo:
        try:
            proxy = demo_model_dir("proxy")
        except AttrilensError:
            proxy = None
    if isinstance(proxy, (str, Path)):
        proxy = LM.from_pretrained(proxy).with_chat_template(target_lm.use_chat_template)
    proxies = _as_proxies(proxy)
    n_episodes = 6 if quick else int(n_episodes)
    n_screen = int(n_screen) if n_screen is not None else 2 * n_episodes
    if max_new_tokens is None:
        max_new_tokens = 32 if target_lm.use_chat_template else 8
    if contextcite_n is None:  # a real model's passes are costly: one ContextCite budget, the package's peer row
        contextcite_n = (8, 16, 32, 64) if is_demo else (32,)
    labels = list(proxies) if proxies else None
    settings = default_settings(quick, labels, peers=peers, contextcite_n=contextcite_n)
    pool = load_episodes(world, None, lm=target_lm, room=max_new_tokens)
    if len(pool) < n_episodes:
        raise AttrilensError(f"{world} has only {len(pool)} usable held-out episodes; pass --episodes {len(pool)} or fewer.")
    answers = screen(target_lm, pool[: max(n_screen, n_episodes)], max_new_tokens)
    answered = [(e, a) for e, a in zip(pool, answers, strict=False) if a["correct"]][:n_episodes]
    if not answered:
        raise AttrilensError(f"The model answers none of the {len(answers)} screened episodes; nothing to attribute. "
                             "Pass a model that reads the context (or more --screen episodes).")
    # warm-up (not timed): naive, cached and the peers (their imports) on the first two paragraphs of an episode
    first, answer = answered[0]
    short = {**first, "context": "\n\n".join(first["context"].split("\n\n")[:2])}
    warm = [s for s in settings if s.peer is not None or s.label in (NAIVE, CACHED)]
    evaluate_episode(target_lm, proxies, short, warm, batch_size, answer["response"], 1.0)
    per_episode = [evaluate_episode(target_lm, proxies, e, settings, batch_size, a["response"], a["gen_seconds"])
                   for e, a in tqdm(answered, desc="bench context", file=sys.stderr)]
    summary = summarise(per_episode, settings)
    where = machine()
    skipped = sorted({f"{k} ({v})" for e in per_episode for k, v in e["skipped"].items()})
    agreement = {r["setting"]: r["max_abs_diff"] for r in summary if r.get("reference")}
    info = {
        "target": target_name, "target_params": target_lm.n_params(), "chat_template": target_lm.use_chat_template,
        "proxies": {str(k): {"name": v.name, "params": v.n_params()} for k, v in proxies.items()},
        "world": str(world), "quick": quick, "screened": len(answers), "answered": sum(a["correct"] for a in answers),
        "episodes": len(per_episode), "max_new_tokens": max_new_tokens,
        "mean_sentences": float(np.mean([e["n_sources"] for e in per_episode])),
        "mean_response_tokens": float(np.mean([len(target_lm.encode_response(e["response"])) for e in per_episode])),
        "correct": sum(e["correct"] for e in per_episode),
        "episodes_with_outliers": sum(e["n_outliers"] > 0 for e in per_episode),
        "cached_max_abs_diff": agreement.get(CACHED, math.nan), "agreement": agreement, "skipped": skipped,
        "batch_size": batch_size, "settings": [asdict(s) for s in settings], "summary": summary,
        "screen": answers, "per_episode": per_episode, "machine": where,
    }
    proxy_text = ", ".join(f"{k or v.name} ({v.n_params():,})" for k, v in proxies.items()) or "none"
    header = (
        f"target {target_name} ({info['target_params']:,} non-embedding params, chat template "
        f"{'on' if info['chat_template'] else 'off'}), proxies {proxy_text}; answers {info['answered']} of "
        f"{info['screened']} screened held-out episodes (greedy, first sentence, answer as a whole word); "
        f"{info['episodes']} answered episodes attributed, {info['mean_sentences']:.1f} sentences and "
        f"{info['mean_response_tokens']:.1f} response tokens on average; "
        f"{info['episodes_with_outliers']} episodes have LOO outliers (score > mean + 2 std); cached max |score − naive| = "
        f"{info['cached_max_abs_diff']:.2e}; {where['processor']}, torch threads {where['torch_threads']}, "
        f"batch size {batch_size}, {where['date']}" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )
    tables = {"settings": settings_table(summary), "agreement": agreement_table(summary), "budget": budget_table(summary)}
    return Report("context", tables, info, header)

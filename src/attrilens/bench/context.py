"""`attrilens bench context`: every method against exact target LOO on held-out reading episodes of the world.

Per episode the target answers greedily (timed), naive exact LOO gives the ground truth, and every setting is
scored for faithfulness (outlier mAP, Spearman, top-k log-prob drop, gold hit@1) and cost (forward passes,
tokens, tokens × non-embedding parameters, wall time), each cost as a ratio to naive LOO in the same run.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attrilens.bench.metrics import average_precision, gold_hit, greedy_match, loo_outliers, ranking, spearman
from attrilens.bench.report import Report, machine
from attrilens.context import CONTEXT_METHODS, ContextAttributor, ContextMethod, parse_method
from attrilens.context.loo import CachedScorer
from attrilens.demo.world import split_sentences
from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.spans import Sources


@dataclass
class Setting:
    """One row of the table: a label, a method name and its options."""

    label: str
    method: str
    options: dict = field(default_factory=dict)

    @property
    def needs_proxy(self) -> bool:
        """Whether the method runs a proxy model (the row is skipped without one)."""
        return parse_method(self.method).proxy is not None


# Table labels that differ from the registered name (kept so that tables compare with earlier runs).
LABELS = {"gradient": "gradient-norm"}
QUICK = {"loo (naive, exact)", "cached (exact)", "hierarchical K=2", "proxy-pruning K=3", "hier+proxy-pruning K=3",
         "contextcite n=16"}


def default_settings(quick: bool = False) -> list[Setting]:
    """The methods and settings compared (naive LOO, the ground truth and cost baseline, comes first).

    The LOO family and ContextCite rows sweep their options; every registered one-pass estimator (one that
    uses no scorer: attention, gradient, ...) gets one row, in the quick run too.
    """
    one_pass = [Setting(LABELS.get(name, name), name) for name, cls in CONTEXT_METHODS.items() if not cls.takes_scorer()]
    s = [
        Setting("loo (naive, exact)", "loo"),
        Setting("cached (exact)", "cached"),
        *(Setting(f"hierarchical K={k}", "hierarchical", {"top_k": k}) for k in (2, 4)),
        Setting("proxy", "proxy"),
        *(Setting(f"proxy-pruning K={k}", "proxy-pruning", {"top_k": k}) for k in (3, 5)),
        *(Setting(f"hier+proxy-pruning K={k}", "hierarchical+proxy-pruning", {"top_k": k, "paragraph_k": p})
          for k, p in ((3, 3), (5, 4))),
        *(Setting(f"contextcite n={n}", "naive+contextcite", {"n_ablations": n}) for n in (8, 16, 32, 64)),
    ]
    if quick:
        s = [x for x in s if x.label in QUICK]
    return s + one_pass


def is_correct(response: str, answer: str) -> bool:
    """Whether the response gives the episode's answer (a leading space, then the word)."""
    return greedy_match(response, f" {answer}")


def _fits(lm: LM, episode: dict, room: int = 12) -> bool:
    """Whether the episode's prompt plus `room` response tokens fits in the model's context."""
    prompt = ContextAttributor(lm).prompt(episode["question"])(episode["context"])
    try:
        lm.check_length(len(lm.encode_prompt(prompt)) + room)
    except AttrilensError:
        return False
    return True


def load_episodes(world: Path, n: int, min_sentences: int = 20, lm: LM | None = None) -> list[dict]:
    """The first n held-out episodes with at least `min_sentences` sentences (that fit `lm`'s context, if given)."""
    rows = [e for e in load_jsonl(Path(world) / "episodes.jsonl", require=("context", "question", "answer"))
            if e.get("split") == "heldout" and len(split_sentences(e["context"])) >= min_sentences
            and (lm is None or _fits(lm, e))]
    if len(rows) < n:
        raise AttrilensError(f"{world} has only {len(rows)} held-out episodes with >= {min_sentences} sentences; "
                             f"pass --episodes {len(rows)} or a larger world.")
    return rows[:n]


def evaluate_episode(target: LM, proxy: LM | None, episode: dict, settings: list[Setting],
                     batch_size: int = 8) -> dict:
    """All settings on one episode: the response, the exact LOO scores, and per-setting metrics and costs."""
    context, query = episode["context"], episode["question"]
    base = ContextAttributor(target, batch_size=batch_size, max_new_tokens=8)
    t0 = time.perf_counter()
    response = target.generate(base.prompt(query)(context), max_new_tokens=8)
    gen_seconds = time.perf_counter() - t0
    if not response.strip():
        response = f" {episode['answer']}"
    results = {}
    for s in settings:
        needs_proxy = s.needs_proxy
        if needs_proxy and proxy is None:
            continue
        attributor = ContextAttributor(target, proxy if needs_proxy else None, method=s.method,
                                       batch_size=batch_size, **s.options)
        t0 = time.perf_counter()
        r = attributor.attribute(context, query, response)
        results[s.label] = (r, time.perf_counter() - t0)
    exact = results[settings[0].label][0].scores
    outliers = loo_outliers(exact)
    src = Sources.split(context, "sentence")
    # top-k log-prob drop under the target for every setting's top-k sources (not part of any method's cost)
    scorer = CachedScorer(target, base.prompt(query), target.encode_response(response), batch_size=batch_size)
    full = float(scorer.base(context).sum())
    wanted = [(label, k, ranking(r.scores)[:k]) for label, (r, _) in results.items() for k in (1, 3)]
    lls = scorer.score([src.ablate(drop) for _, _, drop in wanted]).sum(dim=1).tolist()
    drops = {(label, k): full - ll for (label, k, _), ll in zip(wanted, lls, strict=True)}
    rows = {}
    for label, (r, seconds) in results.items():
        rows[label] = {
            "ap": average_precision(r.scores, outliers), "spearman": spearman(r.scores, exact),
            "drop1": drops[(label, 1)], "drop3": drops[(label, 3)],
            "hit1": gold_hit(r.scores, episode["gold_sentence"]),
            "passes": r.cost.forward_passes, "tokens": r.cost.tokens_computed,
            "flops": r.details["flops_proxy"], "seconds": seconds,
            "max_abs_diff": max(abs(a - b) for a, b in zip(r.scores, exact, strict=True) if a is not None)
            if any(a is not None for a in r.scores) else math.nan,
        }
    return {"id": episode["id"], "response": response, "correct": is_correct(response, episode["answer"]),
            "n_sources": len(src), "n_outliers": len(outliers), "gen_seconds": gen_seconds, "rows": rows}


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
        aps = [r["ap"] for r in rows if not math.isnan(r["ap"])]
        out.append({
            "setting": s.label, "method": s.method,
            "mAP": float(np.mean(aps)) if aps else math.nan,
            "spearman": float(np.mean([r["spearman"] for r in rows])),
            "drop@1": float(np.mean([r["drop1"] for r in rows])), "drop@3": float(np.mean([r["drop3"] for r in rows])),
            "hit@1": float(np.mean([r["hit1"] for r in rows])),
            "passes": float(np.mean([r["passes"] for r in rows])),
            **{f"{k}_ratio": sum(r[k] for r in rows) / totals[k] for k in ("passes", "tokens", "flops", "seconds")},
            "attr_over_gen": sum(r["seconds"] for r in rows) / gen,
            "max_abs_diff": float(np.nanmax([r["max_abs_diff"] for r in rows])),
        })
    return out


def settings_table(summary: list[dict]) -> pd.DataFrame:
    """One row per setting: faithfulness to exact LOO and cost ratios against naive LOO."""
    return pd.DataFrame([{
        "setting": r["setting"], "method": r["method"], "mAP": r["mAP"], "Spearman": r["spearman"],
        "drop@1": r["drop@1"], "drop@3": r["drop@3"], "hit@1": r["hit@1"], "passes": r["passes"],
        "passes×": r["passes_ratio"], "tokens×": r["tokens_ratio"], "FLOPs×": r["flops_ratio"],
        "time×": r["seconds_ratio"], "attr/gen": r["attr_over_gen"],
    } for r in summary])


def format_table(summary: list[dict]) -> str:
    """The settings table as compact markdown with fixed precision (the format docs/benchmarks.md shows)."""
    head = ("| setting | mAP | Spearman | drop@1 | drop@3 | hit@1 | passes | passes× | tokens× | FLOPs× | time× "
            "| attr/gen |")
    lines = [head, "|" + "---|" * 12]
    for r in summary:
        lines.append(
            f"| {r['setting']} | {r['mAP']:.3f} | {r['spearman']:.3f} | {r['drop@1']:.3f} | {r['drop@3']:.3f} "
            f"| {r['hit@1']:.2f} | {r['passes']:.1f} | {r['passes_ratio']:.3f} | {r['tokens_ratio']:.3f} "
            f"| {r['flops_ratio']:.4f} | {r['seconds_ratio']:.3f} | {r['attr_over_gen']:.2f} |"
        )
    return "\n".join(lines)


def budget_table(summary: list[dict]) -> pd.DataFrame:
    """At each sampling baseline's budget n (e.g. ContextCite): its mAP vs the best LOO-family setting within n passes.

    LOO family = settings whose estimator ablates sources; sampling baselines = scorer estimators that do not.
    """
    def estimator(r: dict) -> type[ContextMethod]:
        return parse_method(r["method"]).method_class()

    ours = [r for r in summary if estimator(r).ablates_sources]
    rows = []
    for cc in (r for r in summary if estimator(r).uses_scorer and not estimator(r).ablates_sources):
        best = max((r for r in ours if r["passes"] <= cc["passes"]), key=lambda r: r["mAP"], default=None)
        rows.append({"budget (passes)": cc["passes"], "baseline": cc["setting"], "baseline mAP": cc["mAP"],
                     "best LOO-family setting within budget": best["setting"] if best else "none",
                     "its passes": best["passes"] if best else math.nan, "its mAP": best["mAP"] if best else math.nan})
    return pd.DataFrame(rows)


def run_benchmark(model: Path | None = None, proxy: Path | None = None, world: Path | None = None,
                  n_episodes: int = 50, quick: bool = False, batch_size: int = 8,
                  threads: int | None = None) -> Report:
    """Run the benchmark: tables "settings" and "budget"; info holds the run's facts and per-episode rows."""
    import torch
    from tqdm import tqdm

    if threads is not None:
        torch.set_num_threads(threads)

    from attrilens.demo.paths import demo_model_dir, demo_world_dir

    model = Path(model) if model is not None else demo_model_dir("target")
    world = Path(world) if world is not None else demo_world_dir()
    if proxy is None:
        try:
            proxy = demo_model_dir("proxy")
        except AttrilensError:
            proxy = None
    target_lm = LM.from_pretrained(model)
    proxy_lm = LM.from_pretrained(proxy) if proxy is not None else None
    n_episodes = 6 if quick else n_episodes
    settings = default_settings(quick)
    episodes = load_episodes(world, n_episodes, lm=target_lm)
    evaluate_episode(target_lm, proxy_lm, episodes[0], settings[:2], batch_size)  # warm-up, not timed
    per_episode = [evaluate_episode(target_lm, proxy_lm, e, settings, batch_size)
                   for e in tqdm(episodes, desc="bench context", file=sys.stderr)]
    summary = summarise(per_episode, settings)
    where = machine()
    info = {
        "target": str(model), "target_params": target_lm.n_params(),
        "proxy": str(proxy) if proxy_lm is not None else None,
        "proxy_params": proxy_lm.n_params() if proxy_lm is not None else None,
        "world": str(world), "quick": quick, "episodes": len(per_episode),
        "mean_sentences": float(np.mean([e["n_sources"] for e in per_episode])),
        "correct": sum(e["correct"] for e in per_episode),
        "episodes_with_outliers": sum(e["n_outliers"] > 0 for e in per_episode),
        "cached_max_abs_diff": next(r["max_abs_diff"] for r in summary if r["method"] == "cached"),
        "batch_size": batch_size, "settings": [asdict(s) for s in settings], "summary": summary,
        "per_episode": per_episode, "machine": where,
    }
    header = (
        f"target {model} ({info['target_params']:,} non-embedding params), "
        f"proxy {proxy if proxy_lm is not None else 'none'}"
        + (f" ({info['proxy_params']:,})" if proxy_lm is not None else "")
        + f"; {info['episodes']} held-out episodes, {info['mean_sentences']:.1f} sentences "
        f"on average; model answers correctly in {info['correct']}; "
        f"{info['episodes_with_outliers']} episodes have LOO outliers (score > mean + 2 std); cached max |score − naive| = "
        f"{info['cached_max_abs_diff']:.2e}; {where['processor']}, torch threads {where['torch_threads']}, "
        f"batch size {batch_size}"
    )
    return Report("context", {"settings": settings_table(summary), "budget": budget_table(summary)}, info, header)

"""`attrilens bench context`'s run: load the target and its proxies, screen held-out episodes for the ones it
answers, attribute those under every setting, and report the tables."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from attrilens.bench.context.episodes import load_episodes, screen
from attrilens.bench.context.evaluate import as_proxies, evaluate_episode
from attrilens.bench.context.settings import CACHED, NAIVE, default_settings
from attrilens.bench.context.tables import agreement_table, budget_table, settings_table, summarise
from attrilens.bench.report import Report, machine
from attrilens.errors import AttrilensError
from attrilens.lm import LM


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
    proxies = as_proxies(proxy)
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

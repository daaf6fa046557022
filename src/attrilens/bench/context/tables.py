"""The context benchmark's tables from its per-episode rows: one summary row per setting (faithfulness, cost
ratios against naive LOO), the settings, budget and agreement tables, and the settings table as markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from attrilens.bench.context.settings import Setting
from attrilens.context import ContextMethod, parse_method


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

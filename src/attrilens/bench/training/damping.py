"""TrackStar's ridge sweep (`attrilens bench training --damping-sweep`): MRR, hit@10 and tail-patch by damping
and λ rule, per projection size, on the toy benchmark's model and queries."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from attrilens.bench.report import Report, machine
from attrilens.bench.training.fact_world import (
    QUESTIONS,
    STATEMENTS,
    benchmark_query_sets,
    resolve_bench_model,
)
from attrilens.bench.training.tail_patch import correction_scales, saved_or_estimated_patcher
from attrilens.metrics import rank_order, retrieval_metrics


def damping_sweep(model: Path | None = None, world: Path | None = None, dims: tuple[int, ...] = (4096, 65536),
                  dampings: tuple[float, ...] = (1e-3, 1e-2, 0.1, 1.0), n_queries: int = 180, n_tail: int = 40,
                  progress: bool = True) -> Report:
    """TrackStar's ridge on R: MRR, hit@10 and tail-patch (top-10 − random) by damping and λ rule, per d.

    The benchmark's protocol (same queries, R_eval = the query set); features are computed once per d and R is
    refitted per setting, so a sweep costs one featurisation per d. Ratios are against "no R" in the same run.
    """
    import pandas as pd

    from attrilens.lm import LM
    from attrilens.training.corpus import make_corpus, read_documents
    from attrilens.training.gradients import Example, Featurizer
    from attrilens.training.preconditioning import fit_whitening

    torch.set_num_threads(1)
    model_dir, world_dir, model_desc = resolve_bench_model(model, world, progress)
    lm = LM.from_pretrained(model_dir)
    blocks = make_corpus(read_documents(world_dir / "corpus.jsonl"), lm.tokenizer, block_len=128)
    rng = np.random.default_rng(0)  # the same queries as the training benchmark
    query_sets = benchmark_query_sets(world_dir, n_queries, rng)
    sets = {"questions": query_sets[QUESTIONS], "statements": query_sets[STATEMENTS]}
    patcher, _ = saved_or_estimated_patcher(lm, model_dir, blocks)
    rand = {qi: rng.choice(len(blocks), size=10, replace=False) for qi in range(n_tail)}
    scales = correction_scales(lm, model_dir, Featurizer(lm, proj_dim=None), blocks)
    rows = []
    for d in dims:
        fz = Featurizer(lm, proj_dim=d, scales=scales)
        train = fz.features([Example.block(t) for t in blocks.tokens])
        for set_name, qs in sets.items():
            qex = [Example.response(lm.encode_prompt(q["prompt"]), lm.encode_response(q["target"])) for q in qs]
            feats = fz.features(qex)
            tail_rows = list(range(min(n_tail, len(qex))))
            random_tail = patcher.mean_delta(set_name, qex, blocks, rand, tail_rows)
            settings = [("no R", None, None)] + [(f"damping {g:g}", g, None) for g in dampings]
            settings += [(f"damping {g:g}, λ = 0", g, 0.0) for g in dampings]
            for label, damping, lam in settings:
                if damping is None:
                    q, t, lam_used = feats, train, float("nan")
                else:
                    w = fit_whitening(train, feats, lam=lam, damping=damping)
                    q, t, lam_used = w.apply(feats), w.apply(train), w.lam
                scores = (torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(t, dim=1).T).numpy()
                orders = [rank_order(s) for s in scores]
                top10 = [o[:10] for o in orders]
                m = np.array([retrieval_metrics(o, blocks.docs, qq["gold"]) for o, qq in zip(orders, qs, strict=True)])
                rows.append({"queries": set_name, "d": fz.dim, "setting": label, "lambda": lam_used,
                             "MRR": m[:, 0].mean(), "hit@10": m[:, 2].mean(),
                             "tail-patch": patcher.mean_delta(set_name, qex, blocks, top10, tail_rows) - random_tail})
            if progress:
                print(f"[ridge] d={d} {set_name} done", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    base = df[df.setting == "no R"].set_index(["queries", "d"])
    key = list(zip(df["queries"], df["d"], strict=True))
    df["MRR ÷ no R"] = df["MRR"].to_numpy() / base.loc[key, "MRR"].to_numpy()
    df["tail-patch ÷ no R"] = df["tail-patch"].to_numpy() / base.loc[key, "tail-patch"].to_numpy()
    info = {"model": model_desc, "model_dir": str(model_dir), "world": str(world_dir), "dims": list(dims),
            "dampings": list(dampings), "queries": n_queries, "tail_patch_queries": n_tail, "machine": machine()}
    header = (f"# TrackStar ridge sweep\n\n{model_desc}: {n_queries} queries per set, R_eval = the query set, "
              f"tail-patch on {n_tail}; δ = damping × the mean non-zero eigenvalue of R.")
    return Report("training-ridge", {"ridge": df}, info, header)

"""TrackStar's ridge on R: fact tracing and tail-patch by damping and λ on the demo world.

    python benchmarks/trackstar_ridge.py [--dims 4096 65536] [--dampings 1e-3 1e-2 0.1 1] [--out F]

The benchmark's protocol (`attrilens bench training`): the demo target, 180 random queries in question and statement
wording, R_eval = the query set, tail-patch on the first 40 queries. Features are computed once per d and R is
refitted for each setting, so a sweep costs one featurisation per d. Ratios are against "no R" in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sweep(dims: list[int], dampings: list[float], n_queries: int = 180, n_tail: int = 40):
    """One row per (query set, d, damping, λ rule): MRR, hit@10 and tail-patch (top-10 − random)."""
    import numpy as np
    import pandas as pd
    import torch

    from attrilens.bench.training import (
        QUESTIONS,
        STATEMENTS,
        TailPatcher,
        benchmark_query_sets,
        rank_order,
        retrieval_metrics,
    )
    from attrilens.demo import paths
    from attrilens.lm import LM
    from attrilens.training.corpus import make_corpus, read_documents
    from attrilens.training.gradients import Example, Featurizer
    from attrilens.training.preconditioning import adam_scales, fit_whitening

    torch.set_num_threads(1)
    model_dir, world_dir = paths.demo_model_dir("target"), paths.demo_world_dir()
    lm = LM.from_pretrained(model_dir)
    blocks = make_corpus(read_documents(world_dir / "corpus.jsonl"), lm.tokenizer, block_len=128)
    rng = np.random.default_rng(0)  # the same queries as the training benchmark
    query_sets = benchmark_query_sets(world_dir, n_queries, rng)
    sets = {"questions": query_sets[QUESTIONS], "statements": query_sets[STATEMENTS]}
    patcher = TailPatcher(lm, model_dir)
    rand = {qi: rng.choice(len(blocks), size=10, replace=False) for qi in range(n_tail)}
    scales = adam_scales(model_dir, lm.model, Featurizer(lm, proj_dim=None).modules)
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
            print(f"[ridge] d={d} {set_name} done", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    base = df[df.setting == "no R"].set_index(["queries", "d"])
    key = list(zip(df["queries"], df["d"], strict=True))
    df["MRR ÷ no R"] = df["MRR"].to_numpy() / base.loc[key, "MRR"].to_numpy()
    df["tail-patch ÷ no R"] = df["tail-patch"].to_numpy() / base.loc[key, "tail-patch"].to_numpy()
    return df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--dampings", type=float, nargs="+", default=[1e-3, 1e-2, 0.1, 1.0])
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON")
    args = parser.parse_args()
    import pandas as pd

    df = sweep(args.dims, args.dampings)
    with pd.option_context("display.width", 200, "display.max_rows", None):
        print(df.to_string(index=False))
    if args.out is not None:
        df.to_json(args.out, orient="records", indent=1)


if __name__ == "__main__":
    main()

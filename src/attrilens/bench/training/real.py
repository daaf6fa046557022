"""Lens 2 on a real pretrained model (`attrilens bench training --real`): gold retrieval on country-fact statements,
tail-patch with estimated second moments, projection fidelity, featurisation speed, index build cost and RSS."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.bench.measure import peak_rss_during, stderr_log
from attrilens.bench.report import Report, machine
from attrilens.bench.training.fidelity import real_projection_fidelity
from attrilens.bench.training.real_corpus import completed_facts, real_fact_corpus
from attrilens.bench.training.speed import real_featurisation_speed
from attrilens.bench.training.tail_patch import TailPatcher
from attrilens.metrics import rank_order, retrieval_metrics

REAL_MODEL = "smollm2-135m-instruct"
REAL_BLOCK_LEN = 64  # every statement document fits one block


def real_method_grid(quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(row label, method, options) of the real-model gold-retrieval table; TrackStar uses estimated moments."""
    rows = [("BM25", "bm25", {}), ("grad-cos", "grad-cos", {}),
            ("TrackStar (default: estimated v, adafactor)", "trackstar", {}),
            ("TrackStar − correction", "trackstar", {"correction": False})]
    if not quick:
        rows += [("TrackStar, estimated v adam (per parameter)", "trackstar", {"moment_kind": "adam"}),
                 ("TrackStar, estimated v from per-example gradients", "trackstar", {"moment_batch": 1}),
                 ("TrackStar − R", "trackstar", {"use_r": False}),
                 ("TrackStar d=2^12", "trackstar", {"proj_dim": 2**12})]
    return rows


def run_real_benchmark(model: str = REAL_MODEL, quick: bool = False, progress: bool = True,
                       n_queries: int | None = None, tail_queries: int | None = None, threads: int | None = None,
                       workdir: Path | None = None, tail_lr: float = 1e-4) -> Report:
    """Lens 2 on a real pretrained model: gold retrieval (MRR, recall@10, hit@10) on a country-fact corpus against
    BM25, grad-cos and chance; tail-patch; projection fidelity at d = 2^12…2^16; fast vs vmap featurisation; index
    build seconds per document and peak RSS. Plain prompts (no chat template): the queries are completions."""
    import tempfile

    import pandas as pd
    from tqdm import tqdm

    from attrilens.demo.countries import country_facts
    from attrilens.lm import LM
    from attrilens.models import resolve_model
    from attrilens.training.corpus import make_corpus
    from attrilens.training.gradients import Example
    from attrilens.training.index import build_index
    from attrilens.training.methods import Query

    threads = threads or 1  # on a shared 2-core machine 2 torch threads run 5× slower than 1 (measured)
    torch.set_num_threads(threads)
    log = stderr_log(progress)
    model_dir = resolve_model(model)
    lm = LM.from_pretrained(model, chat_template=False)
    work = Path(workdir or tempfile.mkdtemp(prefix="attrilens-real-bench-"))
    facts = country_facts()
    t0 = time.perf_counter()
    known = completed_facts(lm, [f for f in facts if f.relation == "capital"])
    log(f"[real] {len(known)} capitals completed greedily ({time.perf_counter() - t0:.0f}s)")
    nq = n_queries or (20 if quick else 40)
    docs, queries = real_fact_corpus(known, facts, n_queries=nq, n_other_capitals=40 if quick else 80,
                                     n_other_facts=50 if quick else 100)
    blocks = make_corpus(docs, lm.tokenizer, block_len=REAL_BLOCK_LEN)
    qex = [Example.response(lm.encode_prompt(q["prompt"]), lm.encode_response(q["target"]), name=q["id"])
           for q in queries]
    setup = {"model": model, "model_dir": str(model_dir), "weights": "dequantised Q4 GGUF values (not the original checkpoint)",
             "parameters": lm.n_params(non_embedding=False), "capitals completed": f"{len(known)} of "
             f"{sum(f.relation == 'capital' for f in facts)}", "documents": len(docs), "queries": len(queries),
             "gold per query": 3, "tokens": sum(len(t) for t in blocks.tokens), "threads": threads,
             "chat template": False}
    tables: dict[str, Any] = {"setup": pd.DataFrame([setup])}

    # ---------------------------------------------------------------- gold retrieval
    rows, orders = [], {}
    for label, method, opts in real_method_grid(quick):
        out = work / label.replace(" ", "_").replace("/", "_")
        kw = {"method": method, "block_len": REAL_BLOCK_LEN, **opts}
        t1 = time.perf_counter()
        idx, rss = peak_rss_during(build_index, lm, blocks, out, eval_queries=queries, progress=False, **kw)
        build = time.perf_counter() - t1
        if label.startswith("TrackStar (default"):
            tables["index build"] = pd.DataFrame([{
                "index": label, "documents": len(docs), "tokens": setup["tokens"], "dim": idx.manifest["dim"],
                "build s": build, "s / document": build / len(docs), "peak RSS during the build (MB)":
                rss["peak_rss_mb"], "RSS before (model loaded, MB)": rss["rss_before_mb"],
                "index bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}])
            tables["manifest (default TrackStar)"] = pd.DataFrame([{
                "second_moments": json.dumps(idx.manifest.get("second_moments")),
                "proj_dim": idx.manifest["options"]["proj_dim"], "lambda": idx.manifest.get("lambda")}])
        mets, ords, ranks = [], [], []
        for q, ex in zip(queries, qex, strict=True):
            o = rank_order(idx.scores(Query(example=ex, text=f"{q['prompt']}{q['target']}")))
            ords.append(o[:10])
            mets.append(retrieval_metrics(o, blocks.docs, q["gold"]))
            ranks.append(min(r for r, i in enumerate(o.tolist(), 1) if blocks.docs[i] in q["gold"]))
        m = np.array(mets)
        orders[label] = ords
        rows.append({"method": label, "MRR": m[:, 0].mean(), "recall@10": m[:, 1].mean(), "hit@10": m[:, 2].mean(),
                     "median first-gold rank": float(np.median(ranks)), "dim": idx.manifest.get("dim", 0),
                     "build s": build, "second moments": (idx.manifest.get("second_moments") or {}).get("source") or ""})
        log(f"[real] {label}: MRR {m[:, 0].mean():.3f} recall@10 {m[:, 1].mean():.3f} hit@10 {m[:, 2].mean():.3f} "
            f"({build:.0f}s)")
    rng = np.random.default_rng(1)
    chance = np.mean([[retrieval_metrics(rng.permutation(len(blocks)), blocks.docs, q["gold"]) for _ in range(200)]
                      for q in queries], axis=(0, 1))
    rows.append({"method": "random ranking (mean of 200 draws)", "MRR": chance[0], "recall@10": chance[1],
                 "hit@10": chance[2], "median first-gold rank": float("nan"), "dim": 0, "second moments": ""})
    frame = pd.DataFrame(rows)
    frame["MRR / BM25"] = frame["MRR"] / frame.loc[frame.method == "BM25", "MRR"].item()
    tables["gold retrieval"] = frame

    # ---------------------------------------------------------------- tail-patch
    n_tail = min(tail_queries or (8 if quick else 12), len(queries))
    sample = [blocks.tokens[i] for i in np.random.default_rng(0).permutation(len(blocks))[:64]]
    patcher = TailPatcher.from_estimate(lm, sample, lr=tail_lr)
    tq = list(range(n_tail))
    rand = {qi: rng.choice(len(blocks), size=10, replace=False) for qi in tq}
    patcher.fill([p for picks in (rand, *orders.values()) for p in patcher.pairs("real", qex, blocks, picks, tq)],
                 progress=progress)
    random_mean = patcher.mean_delta("real", qex, blocks, rand, tq)
    tp = []
    for label, ords in tqdm(orders.items(), desc="tail-patch", file=sys.stderr, disable=not progress):
        top = patcher.mean_delta("real", qex, blocks, ords, tq)
        tp.append({"method": label, "Δlogp top-10": top, "Δlogp random-10": random_mean,
                   "tail-patch (top-10 − random)": top - random_mean})
    tables["tail-patch"] = pd.DataFrame(tp)

    # ---------------------------------------------------------------- projection fidelity and speed
    n_fid = (96, 10) if quick else (120, 20)  # every d of the default-size rule, quick or not (cheap)
    tables["projection fidelity"] = real_projection_fidelity(
        lm, [Example.block(t) for t in blocks.tokens[: n_fid[0]]], qex[: n_fid[1]],
        dims=[2**12, 2**13, 2**14, 2**15, 2**16], progress=progress)
    tables["featurisation speed"] = real_featurisation_speed(model, blocks, n=8 if quick else 16)
    header = (f"# Training-data attribution on a real model{' (quick)' if quick else ''}\n\n{model} (weights: "
              f"dequantised Q4 GGUF, not the original checkpoint): {len(docs)} statement documents, {len(queries)} "
              f"capital queries the model completes, 3 gold documents each; plain prompts; tail-patch on {n_tail} "
              f"queries (one Adam step, lr {tail_lr:g}, v estimated from 64 blocks). Speed tables are timings on this "
              "machine.")
    if workdir is None:  # the indexes were scratch: keep only the report
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return Report("training-real", tables, {**setup, "quick": quick, "workdir": str(workdir) if workdir else None,
                                            "machine": machine()}, header)

"""The lens-2 benchmark on a toy model (`attrilens bench training`): fact tracing (MRR, recall@10) and tail-patch
of every registered method's benchmark variants, then projection fidelity and speed, on a fact world."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.bench.measure import stderr_log
from attrilens.bench.report import Report, machine
from attrilens.bench.training.fact_world import QUESTIONS, benchmark_query_sets, resolve_bench_model
from attrilens.bench.training.fidelity import projection_fidelity
from attrilens.bench.training.speed import featurisation_scaling, featurisation_speed, query_latency
from attrilens.bench.training.tail_patch import saved_or_estimated_patcher
from attrilens.metrics import rank_order, retrieval_metrics
from attrilens.training.methods import TDA_METHODS, TDAMethod


def method_grid(quick: bool) -> list[tuple[str, type[TDAMethod], dict[str, Any]]]:
    """(row label, method class, options) of every registered method's benchmark variants, in registry order."""
    return [(label, cls, opts) for _, cls in TDA_METHODS.items() for label, opts in cls.benchmark_variants(quick)]


def run_benchmark(model: Path | None = None, world: Path | None = None, quick: bool = False, progress: bool = True,
                  n_queries: int | None = None, tail_queries: int | None = None, workdir: Path | None = None) -> Report:
    """Every table of the lens-2 benchmark: fact tracing, tail-patch, projection fidelity, featurisation and search speed."""
    import tempfile

    import pandas as pd
    from tqdm import tqdm

    from attrilens.lm import LM
    from attrilens.training.corpus import make_corpus, read_documents
    from attrilens.training.gradients import Example
    from attrilens.training.index import build_index
    from attrilens.training.methods import Query

    torch.set_num_threads(1)  # on this 2-core VM, 2 torch threads are ~40× slower for small ops under load
    model_dir, world_dir, model_desc = resolve_bench_model(model, world, progress)
    lm = LM.from_pretrained(model_dir)
    docs = read_documents(world_dir / "corpus.jsonl")
    rng = np.random.default_rng(0)
    query_sets = benchmark_query_sets(world_dir, n_queries or (40 if quick else 180), rng)
    queries = query_sets[QUESTIONS]
    n_tail = tail_queries or (15 if quick else 40)
    blocks = make_corpus(docs, lm.tokenizer, block_len=128)
    work = Path(workdir or tempfile.mkdtemp(prefix="attrilens-bench-"))
    setup = {"model": model_desc, "model_dir": str(model_dir), "world": str(world_dir), "blocks": len(blocks),
             "queries": len(queries), "tail_patch_queries": n_tail, "threads": torch.get_num_threads()}
    tables: dict = {"setup": pd.DataFrame([setup])}
    log = stderr_log(progress)
    lora: dict[str, Any] = {}  # the LoRA fine-tune, made once for the methods that declare needs_lora

    def model_for(cls: type[TDAMethod]) -> tuple[LM, Path]:
        if not cls.needs_lora:
            return lm, model_dir
        if not lora:
            from attrilens.workflows.lora import finetune_lora

            lora_dir = work / "lora"
            if not (lora_dir / "adapter_config.json").is_file():
                finetune_lora(model_dir, docs, lora_dir, epochs=2, lr=1e-3, progress=progress)
            lora.update(lm=LM.from_pretrained(lora_dir), dir=lora_dir)
        return lora["lm"], lora["dir"]

    # ---------------------------------------------------------------- fact tracing + tail-patch, per query set
    patcher, v_source = saved_or_estimated_patcher(lm, model_dir, blocks, log)
    setup["tail-patch v"] = v_source
    tables["setup"] = pd.DataFrame([setup])
    ft_rows, tp_rows = [], []
    for set_name, qset in query_sets.items():
        qex = [Example.response(lm.encode_prompt(q["prompt"]), lm.encode_response(q["target"]), name=q["id"])
               for q in qset]
        orders = {}
        for name, cls, opts in method_grid(quick):
            t0 = time.perf_counter()
            use_lm, mdir = model_for(cls)
            idx = build_index(use_lm, blocks, work / f"{set_name}-{name}".replace(" ", "_"), method=cls.name,
                              model_dir=mdir, eval_queries=qset, block_len=blocks.block_len, progress=False,
                              **{"proj_dim": None, **opts})
            build_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            mets, ords = [], []
            for q, ex in zip(qset, qex, strict=True):
                o = rank_order(idx.scores(Query(example=ex, text=f"{q['prompt']} {q['target']}")))
                ords.append(o[:10])
                mets.append(retrieval_metrics(o, blocks.docs, q["gold"]))
            m = np.array(mets)
            orders[name] = ords
            ft_rows.append({"queries": set_name, "method": name, "MRR": m[:, 0].mean(), "recall@10": m[:, 1].mean(),
                            "hit@10": m[:, 2].mean(), "dim": idx.manifest.get("dim", 0),
                            "lambda": idx.manifest.get("lambda"), "build_s": round(build_s, 1),
                            "query_s": round((time.perf_counter() - t1) / len(qset), 3)})
            log(f"[fact tracing/{set_name}] {name}: MRR {m[:, 0].mean():.3f} recall@10 {m[:, 1].mean():.3f}")
        chance = np.mean([retrieval_metrics(rng.permutation(len(blocks)), blocks.docs, q["gold"]) for q in qset], axis=0)
        ft_rows.append({"queries": set_name, "method": "random ranking", "MRR": chance[0], "recall@10": chance[1],
                        "hit@10": chance[2], "dim": 0})
        tq = list(range(min(n_tail, len(qset))))
        rand = {qi: rng.choice(len(blocks), size=10, replace=False) for qi in tq}

        random_mean = patcher.mean_delta(set_name, qex, blocks, rand, tq)
        for name, ords in tqdm(orders.items(), desc=f"tail-patch {set_name}", file=sys.stderr, disable=not progress):
            top = patcher.mean_delta(set_name, qex, blocks, ords, tq)
            tp_rows.append({"queries": set_name, "method": name, "Δlogp top-10": top, "Δlogp random": random_mean,
                            "tail-patch (top-10 − random)": top - random_mean})
    ft = pd.DataFrame(ft_rows)
    ft["MRR / BM25"] = ft["MRR"] / ft["queries"].map(ft[ft.method == "BM25"].set_index("queries")["MRR"])
    tables["fact tracing"] = ft
    tp = pd.DataFrame(tp_rows)
    tp["÷ BM25"] = tp["tail-patch (top-10 − random)"] / tp["queries"].map(
        tp[tp.method == "BM25"].set_index("queries")["tail-patch (top-10 − random)"])
    tables["tail-patch"] = tp
    qex = [Example.response(lm.encode_prompt(q["prompt"]), lm.encode_response(q["target"]), name=q["id"])
           for q in queries]

    # ---------------------------------------------------------------- projection fidelity
    tables["projection fidelity"] = projection_fidelity(lm, model_dir, blocks, qex[: (10 if quick else 30)],
                                                        [2**8, 2**10, 2**12, 2**14] + ([] if quick else [2**16]))

    # ---------------------------------------------------------------- speed
    tables["featurisation speed"] = featurisation_speed(model_dir, blocks, n=32 if quick else 64)
    tables["featurisation speed by width"] = featurisation_scaling(lm.tokenizer, blocks,
                                                                   widths=(128, 256) if quick else (128, 256, 512))
    tables["query latency"] = query_latency(work / "latency", ns=(10_000, 100_000), d=4096, reps=10 if quick else 20)
    header = (f"# Training-data attribution benchmark{' (quick)' if quick else ''}\n\n{model_desc}: {len(blocks)} "
              f"blocks, {len(queries)} queries, tail-patch on {n_tail}. Speed tables are timings on this machine.")
    return Report("training", tables, {**setup, "quick": quick, "machine": machine()}, header)

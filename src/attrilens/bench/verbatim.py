"""Verbatim span tracing speed: index build throughput, index size per token, trace latency p50/p95 by corpus size.

Corpus: synthetic, from the fact-world generator — the sentences of a seeded world (`make_world`, 400 entities)
recombined into documents of 3–8 random sentences until the corpus reaches the asked number of tokens (so a
sentence recurs more often as the corpus grows, as boilerplate does in web text). Responses: three random
sentences of the world joined, so that the maximal spans are sentence-sized and may cross a sentence boundary
that some documents share. Tokenizer: the demo target model's (byte-level BPE, 2048 entries, u16 tokens).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from attrilens.bench.report import Report, machine

SIZES = (10**6, 10**7, 10**8)


def synthetic_corpus(tokenizer, n_tokens: int, seed: int = 0, workdir: Path | None = None) -> tuple[list[dict], list[str]]:
    """(documents, sentence pool): fact-world sentences recombined into documents until ≈ n_tokens tokens."""
    from attrilens.jsonl import load_jsonl
    from attrilens.workflows.world.generate import make_world, split_sentences

    tmp = Path(tempfile.mkdtemp(dir=workdir))
    try:
        make_world(tmp, seed=seed, n_entities=400, n_train_episodes=0, n_heldout_episodes=0, n_copy_docs=0,
                   n_copy_eval=0)
        pool = sorted({s for d in load_jsonl(tmp / "corpus.jsonl") for s in split_sentences(d["text"])})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lengths = np.array([len(x) for x in tokenizer(pool, add_special_tokens=False)["input_ids"]])
    rng = np.random.default_rng(seed)
    docs, total, scale = [], 0, 1.0  # scale: tokens of a joined document per token of its sentences alone
    while total * scale < n_tokens:
        picks = rng.integers(0, len(pool), size=(4096, 8))
        sizes = rng.integers(3, 9, size=4096)
        for row, k in zip(picks, sizes, strict=True):
            docs.append({"id": f"doc-{len(docs):08d}", "text": " ".join(pool[i] for i in row[:k])})
            total += int(lengths[row[:k]].sum())
            if total * scale >= n_tokens:
                break
        if len(docs) <= 4096:  # measure the joins' effect once, on the first documents
            sample = docs[:512]
            joined = sum(len(x) for x in tokenizer([d["text"] for d in sample], add_special_tokens=False)["input_ids"])
            alone = sum(len(x) for x in tokenizer([s for d in sample for s in split_sentences(d["text"])],
                                                  add_special_tokens=False)["input_ids"])
            scale = joined / alone
    return docs, pool


def run_benchmark(sizes: tuple[int, ...] | None = None, quick: bool = False, n_responses: int = 20,
                  min_len: int = 8, model: Path | None = None, workdir: Path | None = None,
                  progress: bool = True) -> Report:
    """Build a verbatim index at each corpus size and time `n_responses` traces on it (after one warm-up)."""
    import pandas as pd

    from attrilens.demo.paths import demo_model_dir
    from attrilens.lm import LM
    from attrilens.training.verbatim import build_verbatim_index

    sizes = tuple(sizes or ((SIZES[0],) if quick else SIZES))
    lm = LM.from_pretrained(model or demo_model_dir("target"))
    rows = []
    for size in sizes:
        docs, pool = synthetic_corpus(lm.tokenizer, size, workdir=workdir)
        out = Path(tempfile.mkdtemp(prefix="verbatim-bench-", dir=workdir))
        try:
            t0 = time.perf_counter()
            idx = build_verbatim_index(lm, docs, out / "index", progress=progress)
            build_s = time.perf_counter() - t0
            m = idx.manifest
            n_tok = m["corpus"]["n_tokens"]
            engine = sum(r["bytes"] for k, r in m["files"].items() if k.startswith("engine/"))
            rng = random.Random(size)
            responses = [" ".join(rng.sample(pool, 3)) for _ in range(n_responses)]
            idx.trace("Tell me about it.", target=responses[0], min_len=min_len)  # warm-up: page cache, imports
            lat, n_spans, n_docs = [], [], []
            for r in responses:
                res = idx.trace("Tell me about it.", target=r, min_len=min_len)
                lat.append(res.cost.seconds)
                n_spans.append(len(res.spans))
                n_docs.append(sum(len(s.documents) for s in res.spans))
            stages = m.get("stage_seconds", {})
            rows.append({"corpus tokens": n_tok, "documents": m["corpus"]["n_documents"],
                         "build s": round(build_s, 2), "tokenise s": stages.get("tokenize"),
                         "suffix array s": stages.get("suffix_array"),
                         "build tokens/s": round(n_tok / build_s), "index bytes/token": m["bytes_per_token"],
                         "engine bytes/token": round(engine / n_tok, 3),
                         "trace p50 s": float(np.percentile(lat, 50)), "trace p95 s": float(np.percentile(lat, 95)),
                         "spans/response": float(np.mean(n_spans)), "documents/response": float(np.mean(n_docs)),
                         "response tokens": float(np.mean([len(lm.encode_response(r)) for r in responses]))})
        finally:
            shutil.rmtree(out, ignore_errors=True)
        del docs
    df = pd.DataFrame(rows)
    header = ("# Verbatim span tracing (infini-gram engine)\n\nCorpus: fact-world sentences recombined into "
              "documents (synthetic); tokenizer: the demo target model's; "
              f"{n_responses} responses of three world sentences per size, min_len {min_len}, top_k 10; trace "
              "latency is one `VerbatimIndex.trace` (spans, counts, documents, BM25, character offsets).")
    info = {"sizes": list(sizes), "n_responses": n_responses, "min_len": min_len, "quick": quick,
            "machine": machine()}
    return Report("verbatim", {"verbatim": df}, info, header)

"""Lens 2 benchmark: fact tracing (MRR, recall@10), tail-patch, projection fidelity and speed of every method.

Run `attrilens bench training [--model DIR --world DIR] [--quick] [--out DIR]`. The method rows come from the
registry (`TDA_METHODS`, each class's `benchmark_variants`). Without a model it uses the demo target model when
it exists, else trains (once, cached) a small Llama on a small fact world with the project's trainer, so that
facts are memorised and gold documents are known. `attrilens bench training --damping-sweep` runs TrackStar's
ridge sweep (`damping_sweep`) instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.bench.metrics import rank_order, retrieval_metrics, spearman
from attrilens.bench.report import Report, machine
from attrilens.jsonl import load_jsonl
from attrilens.training.methods import TDA_METHODS, TDAMethod

BENCH_CACHE = Path(os.environ.get("ATTRILENS_CACHE", Path.home() / ".cache" / "attrilens")) / "bench-training"


def prepare_bench_model(cache: Path = BENCH_CACHE, *, n_entities: int = 30, epochs: int = 120,
                        progress: bool = True) -> tuple[Path, Path]:
    """A small fact world (fact documents only) and a 2-layer Llama trained on it until it memorises (cached)."""
    from attrilens.demo.trainer import TrainConfig, train
    from attrilens.demo.world.generate import make_world

    world = cache / "world"
    if not (world / "corpus.jsonl").is_file():
        make_world(world, seed=0, n_entities=n_entities, n_train_episodes=0, n_heldout_episodes=0, n_copy_docs=0,
                   n_copy_eval=0)
    model = cache / "model"
    train(TrainConfig(corpus=world / "corpus.jsonl", out=model, arch="llama", layers=2, width=96, heads=4,
                      epochs=epochs, seq_len=128, batch_size=8, lr=3e-3, warmup_steps=30, vocab_size=768,
                      keep_checkpoints=3, progress=progress, threads=1))
    return model, world


def _resolve(model: Path | None, world: Path | None, progress: bool) -> tuple[Path, Path, str]:
    if model is not None:
        if world is None:
            from attrilens.errors import AttrilensError

            raise AttrilensError("--model needs --world, the fact world the model was trained on. Pass both.")
        return Path(model), Path(world), f"given model {model}"
    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.errors import AttrilensError

    try:
        m = demo_model_dir("target")
        if (m / "optimizer.safetensors").is_file():
            return m, Path(world) if world else demo_world_dir(), "demo target model"
    except AttrilensError:
        pass
    m, w = prepare_bench_model(progress=progress)
    return m, w, "bench model (2-layer Llama, width 96, trained on a 30-entity fact world)"


QUESTIONS, STATEMENTS = "questions (unseen wording)", "statements (training template prefix)"


def benchmark_query_sets(world_dir: Path, n_queries: int, rng: np.random.Generator) -> dict[str, list[dict]]:
    """The benchmark's queries: `n_queries` drawn from queries.jsonl by `rng` (question wording), and the same facts'
    statement prompts from facts.jsonl; each {"id", "prompt", "target", "gold"}."""
    queries = load_jsonl(world_dir / "queries.jsonl", require=())
    sel = sorted(rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False).tolist())
    queries = [queries[i] for i in sel]
    by_fact = {f["id"]: f for f in load_jsonl(world_dir / "facts.jsonl", require=())}
    statements = [{"id": q["fact"], "prompt": by_fact[q["fact"]]["prompt"], "target": by_fact[q["fact"]]["target"],
                   "gold": by_fact[q["fact"]]["docs"]} for q in queries if q.get("fact") in by_fact]
    return {QUESTIONS: queries, STATEMENTS: statements}


class TailPatcher:
    """Δ log p(target | prompt) after one optimizer step on one training block (the run's final AdamW settings).

    The step uses the saved second moments v: v' = β2 v + (1 − β2) g², θ ← θ − η (1 − β1) g / (√v' + ε) with η
    the final learning rate and the mean-token loss of the block (as in training): the block's own contribution
    to Adam's momentum (the momentum itself is not saved).
    """

    def __init__(self, lm, model_dir: Path):
        from safetensors.torch import load_file

        info = json.loads((Path(model_dir) / "training.json").read_text())
        opt = info["optimizer"]
        self.lr, self.eps = float(opt["final_lr"]), float(opt["eps"])
        self.beta1, self.beta2 = (float(b) for b in opt["betas"])
        sq = load_file(str(Path(model_dir) / "optimizer.safetensors"))
        self.lm = lm
        self.params = {n: p.detach() for n, p in lm.model.named_parameters()}
        self.v = {n: sq[f"exp_avg_sq.{n}"].float() for n in self.params}
        self.cache: dict[tuple, float] = {}
        self.base: dict = {}

    def _logprob(self, params, prompt_ids, target_ids) -> float:
        from torch.func import functional_call

        ids = torch.tensor([list(prompt_ids) + list(target_ids)])
        with torch.no_grad():
            logits = functional_call(self.lm.model, params, (ids,), {"use_cache": False}).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        pos = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
        return float(logp[pos, ids[0, pos + 1]].sum())

    def delta(self, qi, prompt_ids, target_ids, bi: int, block_tokens) -> float:
        if (qi, bi) in self.cache:
            return self.cache[(qi, bi)]
        if qi not in self.base:
            self.base[qi] = self._logprob(self.params, prompt_ids, target_ids)
        model = self.lm.model
        ids = torch.tensor([list(block_tokens)])
        for p in model.parameters():
            p.grad = None
        with torch.enable_grad():
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            names = list(self.params)
            grads = torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in names], allow_unused=True)
        new = {}
        for n, g in zip(names, grads, strict=True):
            if g is None:
                new[n] = self.params[n]
                continue
            v = self.beta2 * self.v[n] + (1 - self.beta2) * g * g
            new[n] = self.params[n] - self.lr * (1 - self.beta1) * g / (v.sqrt() + self.eps)
        d = self._logprob(new, prompt_ids, target_ids) - self.base[qi]
        self.cache[(qi, bi)] = d
        return d

    def mean_delta(self, key: str, queries: list, blocks, picks: dict, rows: list[int]) -> float:
        """Mean Δ log p over queries[qi] (Examples, target after the prompt) for qi in `rows`, and the blocks
        picks[qi] of each; `key` names the query set so its cache entries stay apart from another set's."""
        return float(np.mean([self.delta((key, qi), queries[qi].ids[:_plen(queries[qi])], queries[qi].ids[_plen(queries[qi]):],
                                         int(b), blocks.tokens[int(b)]) for qi in rows for b in picks[qi]]))


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
    model_dir, world_dir, model_desc = _resolve(model, world, progress)
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
    log = (lambda *a: print(*a, file=sys.stderr)) if progress else (lambda *a: None)
    lora: dict[str, Any] = {}  # the LoRA fine-tune, made once for the methods that declare needs_lora

    def model_for(cls: type[TDAMethod]) -> tuple[LM, Path]:
        if not cls.needs_lora:
            return lm, model_dir
        if not lora:
            from attrilens.demo.lora import finetune_lora

            lora_dir = work / "lora"
            if not (lora_dir / "adapter_config.json").is_file():
                finetune_lora(model_dir, docs, lora_dir, epochs=2, lr=1e-3, progress=progress)
            lora.update(lm=LM.from_pretrained(lora_dir), dir=lora_dir)
        return lora["lm"], lora["dir"]

    # ---------------------------------------------------------------- fact tracing + tail-patch, per query set
    patcher = TailPatcher(lm, model_dir)
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


def projection_fidelity(lm, model_dir: Path, blocks, queries: list, dims: list[int]):
    """Spearman of projected vs unprojected gradient dot products (Adam-corrected, no R), per d and allocation."""
    import pandas as pd

    from attrilens.training.gradients import Example
    from attrilens.training.methods.trackstar import TrackStar, TrackStarOptions

    def raw_features(**options):
        return TrackStar(TrackStarOptions(use_r=False, unit_norm=False, **options), lm, model_dir)

    ref = raw_features(proj_dim=None)
    bex = [Example.block(t, blocks.block_id(i)) for i, t in enumerate(blocks.tokens)]
    ref_train, ref_q = ref.featurize(bex), ref.featurize(queries)
    ref_scores = (ref_q @ ref_train.T).numpy()
    del ref_train
    rows = []
    for d in dims:
        for allocation in ("proportional", "equal"):
            m = raw_features(proj_dim=d, allocation=allocation)
            s = (m.featurize(queries) @ m.featurize(bex).T).numpy()
            rows.append({"d": d, "allocation": allocation, "actual dim": m.dim, "Spearman vs unprojected": float(
                np.mean([spearman(s[i], ref_scores[i]) for i in range(len(queries))])), "full dim": ref.dim})
    return pd.DataFrame(rows)


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
    from attrilens.training.preconditioning import adam_scales, fit_whitening

    torch.set_num_threads(1)
    model_dir, world_dir, model_desc = _resolve(model, world, progress)
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


def _plen(ex) -> int:
    return ex.mask.index(1.0)


def featurisation_speed(model_dir: Path, blocks, n: int = 64, proj_dim: int = 4096):
    """Examples/s and tokens/s of the fast path vs the vmap path vs one backward per example (same run, same model)."""
    import pandas as pd

    from attrilens.lm import LM
    from attrilens.training.gradients import Example, Featurizer
    from attrilens.training.preconditioning import adam_scales

    lm = LM.from_pretrained(model_dir, attn_implementation="eager")
    ex = [Example.block(t) for t in blocks.tokens[:n]]
    tokens = sum(len(e.ids) for e in ex)
    plain = Featurizer(lm, proj_dim=proj_dim)
    corrected = Featurizer(lm, proj_dim=proj_dim, scales=adam_scales(model_dir, lm.model, plain.modules))
    runs = [("fast, factored (no correction)", lambda: plain.features(ex, batch_size=16)),
            ("fast, per-layer G (Adam-corrected)", lambda: corrected.features(ex, batch_size=16)),
            ("vmap reference (Adam-corrected)", lambda: corrected.features_vmap(ex, batch_size=16)),
            ("loop of backward passes (Adam-corrected)", lambda: corrected.features_loop(ex))]
    rows = []
    plain.features(ex[:2])  # warm-up (first backward, lazy initialisation)
    corrected.features_vmap(ex[:2])
    for name, fn in runs:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        rows.append({"path": name, "examples/s": n / dt, "tokens/s": tokens / dt, "seconds": dt})
    frame = pd.DataFrame(rows)
    ref = frame.loc[frame.path.str.startswith("vmap"), "examples/s"].item()
    frame["× vmap"] = frame["examples/s"] / ref
    frame["bytes/example (fp16)"] = plain.dim * 2
    return frame


def featurisation_scaling(tokenizer, blocks, widths=(128, 256, 512), n: int = 32, proj_dim: int = 4096):
    """Fast path vs vmap path by model width: randomly initialised 4-layer Llamas (vocabulary 2048), no correction.

    The fast path costs about one training step whatever the width; the vmap path also forms every example's
    full weight gradient, which grows as width², so the ratio grows with the model.
    """
    import pandas as pd
    from transformers import LlamaConfig, LlamaForCausalLM

    from attrilens.lm import LM
    from attrilens.training.gradients import Example, Featurizer

    ex = [Example.block(t) for t in blocks.tokens[:n]]
    rows = []
    for width in widths:
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=width, intermediate_size=width * 11 // 4, num_hidden_layers=4,
                          num_attention_heads=max(4, width // 64), vocab_size=len(tokenizer), max_position_embeddings=512,
                          tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, attn_implementation="eager")
        lm = LM(LlamaForCausalLM(cfg).eval(), tokenizer, name=f"random llama width {width}")
        f = Featurizer(lm, proj_dim=proj_dim)
        f.features(ex[:2])  # warm-up
        f.features_vmap(ex[:2])
        t0 = time.perf_counter()
        f.features(ex, batch_size=16)
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        f.features_vmap(ex, batch_size=16)
        vmap = time.perf_counter() - t0
        rows.append({"width": width, "parameters": lm.n_params(non_embedding=False), "fast examples/s": n / fast,
                     "vmap examples/s": n / vmap, "fast ÷ vmap": vmap / fast})
    return pd.DataFrame(rows)


def query_latency(folder: Path, ns=(10_000, 100_000), d: int = 4096, reps: int = 20, shard_rows: int = 16384):
    """p50/p95 exact top-10 search over synthetic fp16 shards vs the time to read those shards once."""
    import shutil

    import pandas as pd

    from attrilens.training.search import search_dot
    from attrilens.training.store import atomic_save

    rows = []
    g = np.random.default_rng(0)
    for n in ns:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        paths = []
        for i, start in enumerate(range(0, n, shard_rows)):
            rows_i = min(shard_rows, n - start)
            arr = g.standard_normal((rows_i, d), dtype=np.float32)
            arr = (arr / np.linalg.norm(arr, axis=1, keepdims=True)).astype(np.float16)  # unit rows, as TrackStar's
            p = folder / f"shard-{i:05d}.npy"
            atomic_save(p, arr)
            paths.append((start, p))
        reads = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _, p in paths:
                with open(p, "rb") as f:
                    while f.read(1 << 24):
                        pass
            reads.append(time.perf_counter() - t0)
        shards = [(s, np.load(p, mmap_mode="c")) for s, p in paths]
        times = []
        for _ in range(reps):
            q = torch.from_numpy(g.standard_normal(d, dtype=np.float32))
            t0 = time.perf_counter()
            search_dot(shards, q / q.norm(), 10, bounded=True)
            times.append(time.perf_counter() - t0)
        read = float(np.median(reads))
        p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
        rows.append({"N": n, "d": d, "bytes": n * d * 2, "read once (s)": read, "p50 (s)": p50, "p95 (s)": p95,
                     "p50 / read": p50 / read})
        del shards
    shutil.rmtree(folder, ignore_errors=True)
    return pd.DataFrame(rows)


if __name__ == "__main__":  # pragma: no cover - convenience: prepare the cached model
    m, w = prepare_bench_model()
    print(json.dumps({"model": str(m), "world": str(w)}), file=sys.stderr)

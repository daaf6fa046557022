"""Lens 2 benchmark: fact tracing (MRR, recall@10), tail-patch, projection fidelity and speed of every method.

Run `attrilens bench training [--model DIR --world DIR] [--quick] [--out DIR]`. The method rows come from the
registry (`TDA_METHODS`, each class's `benchmark_variants`). Without a model it uses the demo target model when
it exists, else trains (once, cached) a small Llama on a small fact world with the project's trainer, so that
facts are memorised and gold documents are known. `attrilens bench training --damping-sweep` runs TrackStar's
ridge sweep (`damping_sweep`) instead. `attrilens bench training --real` (or `--model smollm2-135m-instruct`)
runs `run_real_benchmark` on a downloaded model: country-fact statements with known gold documents, TrackStar
with second moments estimated from the corpus, projection fidelity against exact layer-by-layer products.
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

from attrilens.bench.report import Report, machine
from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.metrics import rank_order, retrieval_metrics, spearman
from attrilens.training.gradients import has_lora
from attrilens.training.methods import TDA_METHODS, TDAMethod

BENCH_CACHE = Path(os.environ.get("ATTRILENS_CACHE", Path.home() / ".cache" / "attrilens")) / "bench-training"


def prepare_bench_model(cache: Path = BENCH_CACHE, *, n_entities: int = 30, epochs: int = 120,
                        progress: bool = True) -> tuple[Path, Path]:
    """A small fact world (fact documents only) and a 2-layer Llama trained on it until it memorises (cached)."""
    from attrilens.workflows.trainer import TrainConfig, train
    from attrilens.workflows.world.generate import make_world

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

    The step uses the second moments v: v' = β2 v + (1 − β2) g², θ ← θ − η (1 − β1) g / (√v' + ε) with η the
    learning rate and the mean-token loss of the block (as in training): the block's own contribution to Adam's
    momentum (the momentum itself is not saved). v and η are the saved optimizer state and final learning rate
    (`from_optimizer_state`), or, for a downloaded model, v estimated from squared minibatch gradients of every
    parameter over a corpus sample and a chosen η (`from_estimate`).
    """

    def __init__(self, lm, v: dict[str, torch.Tensor], *, lr: float, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999)):
        self.lr, self.eps = float(lr), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.lm = lm
        self.params = {n: p.detach() for n, p in lm.model.named_parameters() if n in v}  # v's weights are stepped
        self.v = {n: v[n].float() for n in self.params}
        self.cache: dict[tuple, float] = {}
        self.base: dict = {}

    @classmethod
    def from_optimizer_state(cls, lm, model_dir: Path, lr: float | None = None) -> TailPatcher:
        """The saved AdamW second moments and the run's final learning rate (or `lr`: a schedule that decays to
        zero leaves no step to measure), eps and betas."""
        from safetensors.torch import load_file

        opt = json.loads((Path(model_dir) / "training.json").read_text())["optimizer"]
        sq = load_file(str(Path(model_dir) / "optimizer.safetensors"))
        names = [n for n, _ in lm.model.named_parameters()]
        if has_lora(lm.model):  # a LoRA run: its optimizer trained (and the step moves) the adapter matrices only
            names = [n for n in names if ".lora_A." in n or ".lora_B." in n]
        missing = [n for n in names if f"exp_avg_sq.{n}" not in sq]
        if missing:
            raise AttrilensError(f"{model_dir}/optimizer.safetensors has no second moments for {missing[0]} (and "
                                 f"{len(missing) - 1} more). Use the optimizer state of this model's own run.")
        v = {n: sq[f"exp_avg_sq.{n}"] for n in names}
        return cls(lm, v, lr=float(opt["final_lr"] if lr is None else lr), eps=float(opt["eps"]),
                   betas=tuple(opt["betas"]))

    @classmethod
    def from_estimate(cls, lm, blocks: list[list[int]], *, lr: float, batch_size: int = 8) -> TailPatcher:
        """v = mean over minibatches (of `batch_size` blocks) of the squared gradient of every parameter."""
        model = lm.model
        names = [n for n, _ in model.named_parameters()]
        params = [p for _, p in model.named_parameters()]
        v = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in zip(names, params, strict=True)}
        n_batches = 0
        pad = lm.tokenizer.pad_token_id or 0
        for start in range(0, len(blocks), batch_size):
            rows = blocks[start : start + batch_size]
            width = max(len(b) for b in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for r, b in enumerate(rows):
                ids[r, : len(b)] = torch.as_tensor(b)
                labels[r, : len(b)] = torch.as_tensor(b)
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    v[n].add_(g.float().square())
            n_batches += 1
        return cls(lm, {n: t / max(n_batches, 1) for n, t in v.items()}, lr=lr)

    def _logprob(self, params, prompt_ids, target_ids) -> float:
        from torch.func import functional_call

        ids = torch.tensor([list(prompt_ids) + list(target_ids)])
        with torch.no_grad():
            logits = functional_call(self.lm.model, params, (ids,), {"use_cache": False}).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        pos = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
        return float(logp[pos, ids[0, pos + 1]].sum())

    def _stepped(self, block_tokens) -> dict[str, torch.Tensor]:
        """The parameters after one step on one block."""
        model = self.lm.model
        ids = torch.tensor([list(block_tokens)])
        for p in model.parameters():
            p.grad = None
        named = dict(model.named_parameters())
        names = list(self.params)
        frozen = [n for n in names if not named[n].requires_grad]  # a loaded adapter comes frozen
        for n in frozen:
            named[n].requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                grads = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True)
        finally:
            for n in frozen:
                named[n].requires_grad_(False)
        new = {}
        for n, g in zip(names, grads, strict=True):
            if g is None:
                new[n] = self.params[n]
                continue
            v = self.beta2 * self.v[n] + (1 - self.beta2) * g * g
            new[n] = self.params[n] - self.lr * (1 - self.beta1) * g / (v.sqrt() + self.eps)
        return new

    def fill(self, pairs: list[tuple], progress: bool = False) -> None:
        """Compute the missing Δ of (query key, prompt ids, target ids, block index, block tokens) pairs, one step
        per distinct block (every query that needs it is scored on the same stepped parameters)."""
        from tqdm import tqdm

        by_block: dict[int, list[tuple]] = {}
        for qi, prompt_ids, target_ids, bi, block_tokens in pairs:
            if (qi, bi) in self.cache:
                continue
            if qi not in self.base:
                self.base[qi] = self._logprob(self.params, prompt_ids, target_ids)
            by_block.setdefault(int(bi), []).append((qi, prompt_ids, target_ids, block_tokens))
        for bi, rows in tqdm(by_block.items(), desc="tail-patch steps", file=sys.stderr, disable=not progress):
            new = self._stepped(rows[0][3])
            for qi, prompt_ids, target_ids, _ in rows:
                self.cache[(qi, bi)] = self._logprob(new, prompt_ids, target_ids) - self.base[qi]

    def delta(self, qi, prompt_ids, target_ids, bi: int, block_tokens) -> float:
        """Δ log p(target | prompt) of query `qi` after one step on block `bi` (cached)."""
        self.fill([(qi, prompt_ids, target_ids, bi, block_tokens)])
        return self.cache[(qi, int(bi))]

    def pairs(self, key: str, queries: list, blocks, picks: dict, rows: list[int]) -> list[tuple]:
        """The `fill` pairs of queries[qi] (qi in `rows`) with the blocks picks[qi] of each."""
        return [((key, qi), queries[qi].ids[:_plen(queries[qi])], queries[qi].ids[_plen(queries[qi]):], int(b),
                 blocks.tokens[int(b)]) for qi in rows for b in picks[qi]]

    def mean_delta(self, key: str, queries: list, blocks, picks: dict, rows: list[int]) -> float:
        """Mean Δ log p over queries[qi] (Examples, target after the prompt) for qi in `rows`, and the blocks
        picks[qi] of each; `key` names the query set so its cache entries stay apart from another set's."""
        pairs = self.pairs(key, queries, blocks, picks, rows)
        self.fill(pairs)
        return float(np.mean([self.cache[(p[0], p[3])] for p in pairs]))


def saved_or_estimated_patcher(lm, model_dir: Path, blocks, log=lambda *a: None) -> tuple[TailPatcher, str]:
    """The tail-patcher of the run's own AdamW state, or (when that state lost its range, e.g. float16 underflow)
    one whose v is estimated from the corpus' first 64 blocks; and which of the two it is."""
    from attrilens.training.preconditioning import optimizer_state_problem

    refused = optimizer_state_problem(model_dir)
    if not refused:
        return TailPatcher.from_optimizer_state(lm, model_dir), "optimizer state"
    log(f"[bench] {refused}: tail-patch estimates v from 64 blocks instead")
    final_lr = float(json.loads((Path(model_dir) / "training.json").read_text())["optimizer"]["final_lr"])
    return TailPatcher.from_estimate(lm, [list(t) for t in blocks.tokens[:64]], lr=final_lr), "estimated"


def correction_scales(lm, model_dir: Path, featurizer, blocks) -> dict:
    """1/√v per featurised weight from the saved AdamW state, or, when it lost its range, from v estimated
    per parameter over the corpus' first 64 blocks (what TrackStar's "auto" does then)."""
    from attrilens.training.gradients import Example
    from attrilens.training.moments import estimate_second_moments, moment_scales
    from attrilens.training.preconditioning import adam_scales, optimizer_state_problem

    if not optimizer_state_problem(model_dir):
        return adam_scales(model_dir, lm.model, featurizer.modules)
    sample = [Example.block(t) for t in blocks.tokens[:64]]
    return moment_scales(estimate_second_moments(featurizer, sample, kind="adam"), eps=1e-3)


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


def projection_fidelity(lm, model_dir: Path, blocks, queries: list, dims: list[int]):
    """Spearman of projected vs unprojected gradient dot products (Adam-corrected, no R), per d and allocation."""
    import pandas as pd

    from attrilens.training.gradients import Example
    from attrilens.training.methods.trackstar import TrackStar, TrackStarOptions

    def raw_features(**options):
        m = TrackStar(TrackStarOptions(use_r=False, unit_norm=False, **options), lm, model_dir)
        if m.needs_prepare:  # second moments estimated (the saved state lost its range): same seeded sample each time
            m.prepare(blocks)
        return m

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
    from attrilens.training.preconditioning import fit_whitening

    torch.set_num_threads(1)
    model_dir, world_dir, model_desc = _resolve(model, world, progress)
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


def _plen(ex) -> int:
    return ex.mask.index(1.0)


def featurisation_speed(model_dir: Path, blocks, n: int = 64, proj_dim: int = 4096):
    """Examples/s and tokens/s of the fast path vs the vmap path vs one backward per example (same run, same model)."""
    import pandas as pd

    from attrilens.lm import LM
    from attrilens.training.gradients import Example, Featurizer
    lm = LM.from_pretrained(model_dir, attn_implementation="eager")
    ex = [Example.block(t) for t in blocks.tokens[:n]]
    tokens = sum(len(e.ids) for e in ex)
    plain = Featurizer(lm, proj_dim=proj_dim)
    corrected = Featurizer(lm, proj_dim=proj_dim, scales=correction_scales(lm, model_dir, plain, blocks))
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


# ====================================================================== real pretrained models
REAL_MODEL = "smollm2-135m-instruct"
REAL_BLOCK_LEN = 64  # every statement document fits one block


def completed_facts(lm, facts: list, batch_size: int = 32) -> list:
    """The facts whose target greedy decoding produces from the plain prompt, the word ending there (" Paris",
    not " Parisian"): teacher-forced, one forward per batch — every target token is the argmax after its
    prefix, and the argmax after the whole target does not continue the word."""
    out = []
    for start in range(0, len(facts), batch_size):
        chunk = facts[start : start + batch_size]
        prompts = [lm.encode_prompt(f.prompt) for f in chunk]
        targets = [lm.encode_response(f.target) for f in chunk]
        logits = lm.run([p + t for p, t in zip(prompts, targets, strict=True)]).logits
        for r, (f, p, t) in enumerate(zip(chunk, prompts, targets, strict=True)):
            best = logits[r, len(p) - 1 : len(p) + len(t)].argmax(-1).tolist()
            after = lm.tokenizer.decode(best[-1:], clean_up_tokenization_spaces=False)
            if best[:-1] == t and not (after[:1].isalnum()):
                out.append(f)
    return out


def _doc_id(fact, k: int) -> str:
    return f"{fact.country}-{fact.relation}-{k}".replace(" ", "_").replace("#", "")


def real_fact_corpus(known: list, facts: list, *, n_queries: int, per_fact: int = 3, n_other_capitals: int = 80,
                     n_other_facts: int = 100, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A fine-tuning-style corpus of one-sentence statements with known gold documents, and its queries.

    Queries: `n_queries` capitals the model completes (`known`), drawn with `seed`; each is stated in `per_fact`
    wordings (`CountryFact.statement(k)`, k = 0…) — its gold documents. Distractors: the capitals of other
    countries in one random wording each (the same templates, another entity and value) and region/subregion
    statements, the queried countries included (the same country name, another fact). Returns (documents
    {"id", "text"}, queries {"id", "prompt", "target", "gold"}).
    """
    rng = np.random.default_rng(seed)
    picked = [known[i] for i in sorted(rng.choice(len(known), size=min(n_queries, len(known)), replace=False))]
    chosen = set(picked)
    docs, queries = [], []
    for f in picked:
        gold = [_doc_id(f, k) for k in range(per_fact)]
        docs += [{"id": _doc_id(f, k), "text": f.statement(k)} for k in range(per_fact)]
        queries.append({"id": _doc_id(f, 0).rsplit("-", 1)[0], "prompt": f.prompt, "target": f.target, "gold": gold})
    capitals = [f for f in facts if f.relation == "capital" and f not in chosen]
    others = [f for f in facts if f.relation != "capital"]
    for pool, n in ((capitals, n_other_capitals), (others, n_other_facts)):
        for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False)):
            k = int(rng.integers(4))
            docs.append({"id": _doc_id(pool[i], k), "text": pool[i].statement(k)})
    return docs, queries


def _rss_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_during(fn, *args, **kwargs) -> tuple[Any, dict[str, float | None]]:
    """Run fn(*args, **kwargs); return its result and {"rss_before_mb", "peak_rss_mb"}: the process's resident set before, and its
    peak while fn ran (Linux: the high-water mark reset through /proc/self/clear_refs; elsewhere the process's
    lifetime peak from getrusage, which may predate fn)."""
    import resource

    before = _rss_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        exact = True
    except OSError:
        exact = False
    out = fn(*args, **kwargs)
    peak = _rss_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out, {"rss_before_mb": before, "peak_rss_mb": peak}


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
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
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


def real_projection_fidelity(lm, blocks: list, queries: list, dims: list[int], batch_size: int = 8,
                             progress: bool = True):
    """Spearman of projected vs exact gradient dot products, per query over `blocks`, at each d (proportional
    split), uncorrected and with the Adafactor-factored estimated correction. The exact products are taken layer
    by layer from token Gram matrices (`training.fidelity`); one backward pass per batch serves every d."""
    import pandas as pd
    from tqdm import tqdm

    from attrilens.training.fidelity import gram_inner_products
    from attrilens.training.gradients import Featurizer
    from attrilens.training.moments import estimate_second_moments, moment_scales

    base = Featurizer(lm, proj_dim=None)
    factored = moment_scales(estimate_second_moments(base, blocks, kind="adafactor", batch_size=8), 1e-3)
    variants = {"none": None, "adafactor (estimated)": factored}
    feats = {(c, d): Featurizer(lm, proj_dim=d, scales=s) for c, s in variants.items() for d in dims}
    qg = base.captured_gradients(queries)
    exact = {c: [] for c in variants}
    proj_q = {k: f.project_captured(qg) for k, f in feats.items()}
    proj_b = {k: [] for k in feats}
    for start in tqdm(range(0, len(blocks), batch_size), desc="projection fidelity", file=sys.stderr,
                      disable=not progress):
        bg = base.captured_gradients(blocks[start : start + batch_size])
        for c, s in variants.items():
            exact[c].append(gram_inner_products(qg, bg, s))
        for k, f in feats.items():
            proj_b[k].append(f.project_captured(bg))
    rows = []
    for (c, d), f in feats.items():
        ref = torch.cat(exact[c], dim=1).numpy()
        est = (proj_q[(c, d)].double() @ torch.cat(proj_b[(c, d)]).double().T).numpy()
        rho = [spearman(est[i], ref[i]) for i in range(len(queries))]
        rows.append({"correction": c, "d": d, "actual dim": f.dim, "Spearman vs exact (mean)": float(np.mean(rho)),
                     "Spearman (min over queries)": float(np.min(rho)), "exact dims": base.dim,
                     "queries × blocks": f"{len(queries)} × {len(blocks)}"})
    return pd.DataFrame(rows)


def real_featurisation_speed(model: str, blocks, n: int = 16, batch_size: int = 8, proj_dim: int | None = None):
    """Examples/s of the fast paths (factored; factored with an Adafactor-style correction; per-layer G with an
    elementwise Adam-style one) against the vmap reference (elementwise correction), same examples, same run."""
    import pandas as pd

    from attrilens.lm import LM
    from attrilens.training.gradients import Example, Featurizer
    from attrilens.training.methods.gradient import GradientMethod
    from attrilens.training.moments import estimate_second_moments, moment_scales

    lm = LM.from_pretrained(model, chat_template=False, attn_implementation="eager")
    d = proj_dim or GradientMethod.default_proj_dim(lm)
    ex = [Example.block(t) for t in blocks.tokens[:n]]
    tokens = sum(len(e.ids) for e in ex)
    plain = Featurizer(lm, proj_dim=d)
    adam = moment_scales(estimate_second_moments(plain, ex, kind="adam", batch_size=batch_size), 1e-3)
    fact = moment_scales(estimate_second_moments(plain, ex, kind="adafactor", batch_size=batch_size), 1e-3)
    elementwise = Featurizer(lm, proj_dim=d, scales=adam)
    factored = Featurizer(lm, proj_dim=d, scales=fact)
    runs = [("fast, factored (no correction)", lambda: plain.features(ex, batch_size=batch_size)),
            ("fast, factored (Adafactor-style correction)", lambda: factored.features(ex, batch_size=batch_size)),
            ("fast, per-layer G (Adam-style correction)", lambda: elementwise.features(ex, batch_size=batch_size)),
            ("vmap reference (Adam-style correction)", lambda: elementwise.features_vmap(ex, batch_size=4))]
    plain.features(ex[:2])  # warm-up (first backward, lazy initialisation) of both paths
    elementwise.features_vmap(ex[:1], batch_size=1)
    rows = []
    for name, fn in runs:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        rows.append({"path": name, "examples/s": n / dt, "tokens/s": tokens / dt, "seconds": dt, "d": plain.dim})
    frame = pd.DataFrame(rows)
    frame["× vmap"] = frame["examples/s"] / frame.loc[frame.path.str.startswith("vmap"), "examples/s"].item()
    return frame

"""Patchscopes benchmark (`attrilens bench inspect`): a fact-world suite for the demo model, a real-model suite.

World suite (a demo model and its fact world; the default for local models):
1. Next-token decoding by layer on held-out (sequence, position) pairs of the world's texts: precision@1 (the read-out's
   top-1 equals the model's own final top-1), surprisal −log p_final(read-out top-1) and KL(final ‖ read-out) for the
   logit lens, a least-squares affine map into the last layer, a tuned lens, and token identity (few-shot and bare `?`).
2. Attribute extraction by layer on fact-world relations (test entities) vs a per-layer linear probe trained on
   dev entities, with the input-only control (the target prompt without a patch).
3. Multi-hop: hop 1 read from a context, hop 2 from memory; the (ℓ, ℓ*) pair is chosen on a dev split.
4. Speed: one patched forward vs a plain one; the batched sweep vs one forward per (layer, position). Memory: the
   process's peak resident set size over the whole run (`info.peak_rss_mib`).

Real suite (`run_real_benchmark`, the default for a registered real model): part 1 on CPython documentation prose
(`pydoc_data.topics`, fit and held-out topics disjoint), attribute extraction on `countryinfo` facts the model
completes greedily (capital, region, subregion) vs a linear probe and the no-patch control, and part 4.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attrilens.bench.report import Report, machine
from attrilens.demo.countries import RELATIONS as COUNTRY_RELATIONS
from attrilens.demo.countries import CountryFact
from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch
from attrilens.metrics import greedy_match, next_token_agreement
from attrilens.patchscopes.mappings import LayerMaps, TunedLens, collect_states, fit_affine, token_rows
from attrilens.patchscopes.patchscope import Patchscope, Query, encode_target
from attrilens.patchscopes.presets import BARE, PLACEHOLDER, TOKEN_IDENTITY, placeholder_target
from attrilens.workflows.world import relation_template


@dataclass
class BenchConfig:
    """Sizes of the benchmark (the quick variant is a smoke run)."""

    n_fit_texts: int = 400
    n_eval_seqs: int = 125
    positions_per_seq: int = 8
    max_tokens: int = 64
    tuned_steps: int = 400
    tuned_batch_tokens: int = 512
    tuned_lr: float = 0.5
    chunk_size: int = 128
    layer_step: int = 1  # patched sweeps (token identity, attribute extraction) read layers 0, k, 2k, ... and L
    affine: bool = True  # also score least-squares affine maps into the last layer
    n_affine_texts: int | None = None  # fit texts the affine maps are fitted on (None: all)
    queries_per_call: int = 1024  # token-identity queries per Patchscope call (bounds the [n, V] logits held)
    max_facts_per_relation: int | None = None  # real suite: test facts per relation (None: all the model knows)
    speed_prompt_tokens: int | None = None  # speed sweep prompt length (None: the longest eval row)
    speed_rows: int = 16  # rows of the plain vs patched forward
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(n_fit_texts=60, n_eval_seqs=20, positions_per_seq=5, tuned_steps=40)

    @classmethod
    def real(cls, model: str, quick: bool = False) -> BenchConfig:
        """Sizes of the real-model suite for a registered model (others: SmolLM2's), chosen to keep a run within
        ~20 minutes on 2 CPU cores; `quick` is a smoke run of a few minutes."""
        if quick:
            return cls(n_fit_texts=24, n_eval_seqs=6, positions_per_seq=4, max_tokens=32, tuned_steps=4,
                       tuned_batch_tokens=16, chunk_size=64, layer_step=6, affine=False, queries_per_call=256,
                       max_facts_per_relation=4, speed_prompt_tokens=4, speed_rows=2)
        return cls(**REAL_SIZES.get(model, REAL_SIZES["smollm2-135m-instruct"]))


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def _add_run_facts(info: dict, t0: float) -> None:
    """The run's wall seconds, peak resident memory and machine, recorded once per benchmark."""
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["peak_rss_mib"] = _peak_rss_mib()
    info["machine"] = machine()


def _peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def tuned_lens_cost_table(next_token_info: dict):
    """One row: what training the tuned lens here cost (seconds, steps, tokens) and where it ended (the mean KL of
    its last training batch, nats), from `next_token_table`'s info."""
    import pandas as pd

    t = next_token_info["tuned_lens"]
    return pd.DataFrame([{"fit texts": next_token_info["fit_texts"], "steps": t["steps"],
                          "tokens per step": t["batch_tokens"], "tokens seen": t["tokens_seen"],
                          "distinct tokens available": t["tokens_available"], "lr": t["lr"],
                          "seconds": t["seconds"], "final training KL": t["final_kl"]}])


# ---------------------------------------------------------------------------------------------- 1. next token
def _pairs(rows: list[list[int]], per_seq: int, rng: random.Random, skip: Collection[int] = ()) -> list[tuple[int, int]]:
    """`per_seq` random (row, position) pairs per row, never at a token in `skip` (special tokens: BOS)."""
    out = []
    for r, ids in enumerate(rows):
        positions = [i for i, t in enumerate(ids) if t not in skip]
        out += [(r, i) for i in sorted(rng.sample(positions, min(per_seq, len(positions))))]
    return out


def sweep_layers(n_layers: int, step: int) -> list[int]:
    """Layers 0, step, 2·step, ... and always the last one (patched sweeps cost one target row per layer)."""
    if step < 1:
        raise AttrilensError(f"layer_step must be at least 1, got {step}. Pass 1 to read every layer.")
    return sorted(set(range(0, n_layers + 1, step)) | {n_layers})


@torch.no_grad()
def _pair_states(lm: LM, rows: list[list[int]], pairs: list[tuple[int, int]], batch: int = 16) -> dict[int, torch.Tensor]:
    """Residual states {layer: [n_pairs, d]} of every layer at the (row, position) pairs."""
    by_row: dict[int, list[int]] = {}
    for k, (r, _) in enumerate(pairs):
        by_row.setdefault(r, []).append(k)
    out = {layer: torch.empty(len(pairs), lm.d_model) for layer in range(lm.n_layers + 1)}
    for start in range(0, len(rows), batch):
        run = lm.run(rows[start : start + batch], read_layers=range(lm.n_layers + 1))
        for r in range(start, min(start + batch, len(rows))):
            for k in by_row.get(r, []):
                for layer in out:
                    out[layer][k] = run.hidden[layer][r - start, pairs[k][1]].float()
    return out


class _Scores:
    """Running per-(method, layer) sums of precision@1, surprisal and KL over read-out rows."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, int], list[float]] = {}

    def add(self, method: str, layer: int, logits: torch.Tensor, final_logp: torch.Tensor) -> None:
        hit, surprisal, kl = next_token_agreement(logits, final_logp)
        acc = self.sums.setdefault((method, layer), [0.0, 0.0, 0.0, 0])
        acc[0] += hit.sum().item()
        acc[1] += surprisal.sum().item()
        acc[2] += kl.sum().item()
        acc[3] += len(hit)

    def rows(self) -> list[dict]:
        return [{"method": m, "layer": layer, "precision@1": a[0] / a[3], "surprisal": a[1] / a[3], "KL": a[2] / a[3]}
                for (m, layer), a in self.sums.items()]


@torch.no_grad()
def next_token_table(lm: LM, fit_texts: list[str], eval_texts: list[str], cfg: BenchConfig, lens_out: Path | None = None):
    """precision@1, surprisal and KL(final ‖ read-out) by layer and method on held-out (sequence, position) pairs.

    Lens read-outs (logit lens, affine map, tuned lens) at every layer; token identity (few-shot and bare `?`,
    ℓ* = ℓ) at `sweep_layers(L, cfg.layer_step)`. The tuned lens is trained here on `fit_texts`; its cost is
    recorded. Everything is scored in chunks, so a large vocabulary never holds more than a chunk of logits.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    L = lm.n_layers
    fit_rows = token_rows(lm, fit_texts, max_tokens=cfg.max_tokens)
    eval_rows = token_rows(lm, eval_texts, max_tokens=cfg.max_tokens)
    pairs = _pairs(eval_rows, cfg.positions_per_seq, random.Random(cfg.seed), set(lm.tokenizer.all_special_ids))
    H = _pair_states(lm, eval_rows, pairs)
    step = 256
    final_logp = torch.cat([torch.log_softmax(lm.unembed(H[L][s : s + step]).float(), -1)
                            for s in range(0, len(pairs), step)])
    n_affine = len(fit_rows) if cfg.n_affine_texts is None else min(cfg.n_affine_texts, len(fit_rows))
    _log(f"[inspect bench] {len(pairs)} held-out pairs; fitting the tuned lens on {len(fit_rows)} texts "
         f"({cfg.tuned_steps} steps x {cfg.tuned_batch_tokens} tokens)"
         + (f" and affine maps on {n_affine} texts" if cfg.affine else ""))
    methods = {"logit lens": lambda h, layer: h}
    info: dict = {}
    if cfg.affine:
        t0 = time.perf_counter()
        xs = collect_states(lm, fit_rows[:n_affine], range(L + 1))
        affine = LayerMaps({(layer, L): fit_affine(xs[layer], xs[L]) for layer in range(L + 1)})
        methods["affine map"] = lambda h, layer: affine(h, layer, L)
        info["affine"] = {"texts": n_affine, "tokens": xs[L].shape[0], "seconds": round(time.perf_counter() - t0, 1)}
        del xs
    t0 = time.perf_counter()
    with torch.enable_grad():
        lens = TunedLens.train(lm, fit_texts, steps=cfg.tuned_steps, batch_tokens=cfg.tuned_batch_tokens,
                               lr=cfg.tuned_lr, max_tokens=cfg.max_tokens, seed=cfg.seed)
    lens_seconds = time.perf_counter() - t0
    if lens_out is not None:
        lens.save(lens_out)
    scores = _Scores()
    methods["tuned lens"] = lambda h, layer: lens(h, layer, L)
    for name, fn in methods.items():
        for layer in range(L + 1):
            for s in range(0, len(pairs), step):
                scores.add(name, layer, lm.unembed(fn(H[layer][s : s + step], layer)), final_logp[s : s + step])
    layers = sweep_layers(L, cfg.layer_step)
    ps = Patchscope(lm, chunk_size=cfg.chunk_size, progress=False)
    per_chunk = max(1, cfg.queries_per_call // len(layers))
    for name, target in (("token identity", TOKEN_IDENTITY), ("token identity (bare ?)", BARE)):
        tids = tuple(encode_target(lm, target))
        for s in tqdm(range(0, len(pairs), per_chunk), desc=name, leave=False):
            chunk = list(range(s, min(s + per_chunk, len(pairs))))
            queries = [Query(tuple(eval_rows[pairs[k][0]]), layer, pairs[k][1], tids, layer, len(tids) - 1,
                             len(tids) - 1) for layer in layers for k in chunk]
            logits = ps.logits(queries)
            for j, layer in enumerate(layers):
                scores.add(name, layer, logits[j * len(chunk) : (j + 1) * len(chunk)], final_logp[chunk])
    info |= {"pairs": len(pairs), "eval_texts": len(eval_rows), "fit_texts": len(fit_rows),
             "token_identity_layers": layers,
             "tuned_lens": {"seconds": round(lens_seconds, 1), "steps": lens.train_info["steps"],
                            "batch_tokens": cfg.tuned_batch_tokens, "lr": cfg.tuned_lr,
                            "tokens_seen": lens.train_info["steps"] * min(cfg.tuned_batch_tokens, lens.train_info["tokens"]),
                            "tokens_available": lens.train_info["tokens"], "final_kl": lens.train_info["final_kl"]},
             "tuned_lens_seconds": round(lens_seconds, 1), "tuned_lens_final_kl": lens.train_info["final_kl"]}
    return pd.DataFrame(scores.rows()), info


# ---------------------------------------------------------------------------------------------- 2. attributes
SOURCE_TEMPLATE = "Few maps show the borders of {e}"


def _split_entities(facts: list[dict], seed: int) -> tuple[set[str], set[str]]:
    entities = sorted({f["entity"] for f in facts})
    random.Random(seed).shuffle(entities)
    half = len(entities) // 2
    return set(entities[:half]), set(entities[half:])


@torch.no_grad()
def attribute_table(lm: LM, facts: list[dict], cfg: BenchConfig):
    """Attribute-extraction accuracy by layer (test entities) vs per-layer linear probes and the no-patch control."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    L = lm.n_layers
    dev, test = _split_entities(facts, cfg.seed)
    ps = Patchscope(lm, chunk_size=cfg.chunk_size)
    test_facts = [f for f in facts if f["entity"] in test]
    n_new = max(len(lm.tokenizer(f["target"], add_special_tokens=False)["input_ids"]) for f in facts) + 1
    queries, golds = [], []
    targets = {}
    for rel in sorted({f["relation"] for f in facts}):
        targets[rel] = placeholder_target(lm, relation_template(rel))
    for layer in range(L + 1):
        for f in test_facts:
            tids, tpos = targets[f["relation"]]
            sids = tuple(lm.encode_prompt(SOURCE_TEMPLATE.format(e=f["entity"])))
            queries.append(Query(sids, layer, len(sids) - 1, tuple(tids), layer, tpos, len(tids) - 1))
            golds.append(f["target"])
    gens = ps.generate(queries, max_new_tokens=n_new, stop_strings=("\n", "."))
    hits = [greedy_match(g, t) for g, t in zip(gens, golds, strict=True)]
    # no-patch control: the target prompt alone
    control = {}
    for rel, (tids, _) in targets.items():
        out = lm.generate_ids([tids], max_new_tokens=n_new, stop_strings=("\n", "."))[0]
        control[rel] = lm.tokenizer.decode(out, clean_up_tokenization_spaces=False)
    control_acc = sum(greedy_match(control[f["relation"]], f["target"]) for f in test_facts) / len(test_facts)
    # memorisation reference: the fact's own statement prompt
    own = lm.generate_ids([lm.encode_prompt(f["prompt"]) for f in test_facts], max_new_tokens=n_new, stop_strings=("\n", "."))
    own_acc = sum(greedy_match(lm.tokenizer.decode(o), f["target"]) for o, f in zip(own, test_facts, strict=True)) / len(test_facts)
    # per-layer linear probes: subject state → value, one multinomial logistic regression per relation and layer
    ents = sorted({f["entity"] for f in facts})
    rows_e = [lm.encode_prompt(SOURCE_TEMPLATE.format(e=e)) for e in ents]
    run = lm.run(rows_e, read_layers=range(L + 1), padding_side="left")
    feats = {layer: run.hidden[layer][:, -1].float().numpy() for layer in range(L + 1)}
    index = {e: k for k, e in enumerate(ents)}
    rows = []
    n = len(test_facts)
    for layer in range(L + 1):
        correct = 0
        for rel in sorted(targets):
            tr = [f for f in facts if f["relation"] == rel and f["entity"] in dev]
            te = [f for f in test_facts if f["relation"] == rel]
            x_tr = feats[layer][[index[f["entity"]] for f in tr]]
            x_te = feats[layer][[index[f["entity"]] for f in te]]
            clf = LogisticRegression(max_iter=2000, C=1.0).fit(x_tr, [f["value"] for f in tr])
            correct += sum(p == f["value"] for p, f in zip(clf.predict(x_te), te, strict=True))
        rows.append({"layer": layer, "patchscope": sum(hits[layer * n : (layer + 1) * n]) / n, "linear probe": correct / n,
                     "no-patch control": control_acc, "model on fact prompt": own_acc})
    return pd.DataFrame(rows), {"test_facts": n, "dev_entities": len(dev), "test_entities": len(test)}


# ---------------------------------------------------------------------------------------------- 3. multi-hop
def _fresh_names(taken: set[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    onsets, vowels = "bdfgklmnprstvz", "aeiou"
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(2)).capitalize()
        if w.lower() not in taken and w not in out:
            out.append(w)
    return out


def multi_hop_items(facts: list[dict], seed: int) -> list[dict]:
    """Two-hop items: hop 1 from a context ("In K, the capital city is E."), hop 2 from memory (E's relation value)."""
    from attrilens.context.template import PROMPT_TEMPLATE
    from attrilens.workflows.world import RELATIONS

    taken = {f["entity"].lower() for f in facts} | {f["value"].lower() for f in facts}
    rng = random.Random(seed)
    by_entity: dict[str, list[dict]] = {}
    for f in facts:
        by_entity.setdefault(f["entity"], []).append(f)
    names = _fresh_names(taken, 3 * len(facts), seed)
    items = []
    for k, f in enumerate(facts):
        if f["relation"] == "founder":  # a person's name is not a place; keep hop 2 about realms
            continue
        alias, d1, d2 = names[3 * k : 3 * k + 3]
        others = rng.sample([e for e in by_entity if e != f["entity"]], 2)
        lines = [f"In {d1}, the capital city is {others[0]}.", f"In {alias}, the capital city is {f['entity']}.",
                 f"In {d2}, the capital city is {others[1]}."]
        rng.shuffle(lines)
        context = " ".join(lines)
        hop1 = PROMPT_TEMPLATE.format(context=context, question=f"Which city serves as the capital of {alias}?")
        q2 = RELATIONS[f["relation"]]["questions"][0].format(e=f"the capital of {alias}")
        items.append({"entity": f["entity"], "relation": f["relation"], "hop1": hop1, "hop1_answer": f" {f['entity']}",
                      "hop2_template": relation_template(f["relation"]), "answer": f["target"],
                      "vanilla": PROMPT_TEMPLATE.format(context=context, question=q2)})
    return items


@torch.no_grad()
def multi_hop_table(lm: LM, facts: list[dict], cfg: BenchConfig, max_items: int | None = None):
    """Multi-hop accuracy: the (ℓ, ℓ*) pair with the best dev accuracy, evaluated on test entities."""
    import pandas as pd

    L = lm.n_layers
    dev, test = _split_entities(facts, cfg.seed)
    items = multi_hop_items(facts, cfg.seed)[:max_items]
    n_new = max(len(lm.tokenizer(it["answer"], add_special_tokens=False)["input_ids"]) for it in items) + 1
    ps = Patchscope(lm, chunk_size=cfg.chunk_size)
    pairs = [(a, b) for a in range(L + 1) for b in range(L + 1)]
    targets = {it["hop2_template"]: placeholder_target(lm, it["hop2_template"]) for it in items}
    queries, meta = [], []
    for it in items:
        sids = tuple(lm.encode_prompt(it["hop1"]))
        tids, tpos = targets[it["hop2_template"]]
        for a, b in pairs:
            queries.append(Query(sids, a, len(sids) - 1, tuple(tids), b, tpos, len(tids) - 1))
            meta.append((it, (a, b)))
    gens = ps.generate(queries, max_new_tokens=n_new, stop_strings=("\n", "."))
    acc: dict[tuple[str, tuple[int, int]], list[bool]] = {}
    per_item: dict[int, list[bool]] = {}
    for k, ((it, pair), g) in enumerate(zip(meta, gens, strict=True)):
        split = "dev" if it["entity"] in dev else "test"
        hit = greedy_match(g, it["answer"])
        acc.setdefault((split, pair), []).append(hit)
        if split == "test":
            per_item.setdefault(k // len(pairs), []).append(hit)
    mean = {key: sum(v) / len(v) for key, v in acc.items()}
    best = max(pairs, key=lambda p: (mean.get(("dev", p), 0.0), -p[0], p[1]))
    test_items = [it for it in items if it["entity"] in test]

    def gen_acc(prompts: list[str], golds: list[str]) -> float:
        outs = []
        for s in range(0, len(prompts), cfg.chunk_size):
            outs += lm.generate_ids([lm.encode_prompt(p) for p in prompts[s : s + cfg.chunk_size]], max_new_tokens=n_new,
                                    stop_strings=("\n", "."))
        return sum(greedy_match(lm.tokenizer.decode(o), g) for o, g in zip(outs, golds, strict=True)) / max(1, len(golds))

    hop1 = gen_acc([it["hop1"] for it in test_items], [it["hop1_answer"] for it in test_items])
    vanilla = gen_acc([it["vanilla"] for it in test_items], [it["answer"] for it in test_items])
    control = gen_acc([it["hop2_template"] for it in test_items], [it["answer"] for it in test_items])
    rows = [
        {"method": f"patchscope, pair fixed on dev (ℓ={best[0]}, ℓ*={best[1]})", "test accuracy": mean.get(("test", best), 0.0)},
        {"method": "vanilla two-hop question (one prompt)", "test accuracy": vanilla},
        {"method": "hop-2 template, no patch (control)", "test accuracy": control},
        {"method": "hop 1 alone (reading the context)", "test accuracy": hop1},
        {"method": "oracle: best pair per item (not a fair score)",
         "test accuracy": sum(any(v) for v in per_item.values()) / max(1, len(per_item))},
    ]
    return pd.DataFrame(rows), {"items": len(items), "test_items": len(test_items), "pairs_searched": len(pairs),
                                "best_pair": list(best), "dev_accuracy_at_best": mean.get(("dev", best), 0.0)}


# ---------------------------------------------------------------------------------------------- 4. speed
def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def speed_table(lm: LM, texts: list[str], cfg: BenchConfig, reps: int = 5):
    """Patched vs plain forward; batched sweep vs a loop of one forward per (layer, position)."""
    import pandas as pd

    L = lm.n_layers
    rows_ids = token_rows(lm, texts, max_tokens=cfg.max_tokens)[: cfg.speed_rows]
    g = torch.Generator().manual_seed(cfg.seed)
    mid = max(1, L // 2)
    patches = [Patch(r, mid, len(s) // 2, torch.randn(lm.d_model, generator=g)) for r, s in enumerate(rows_ids)]
    lm.run(rows_ids)  # warm-up
    plain = _median_time(lambda: lm.run(rows_ids), reps)
    patched = _median_time(lambda: lm.run(rows_ids, patches=patches), reps)
    prompt = max(rows_ids, key=len)[: cfg.speed_prompt_tokens]
    tids = tuple(encode_target(lm, TOKEN_IDENTITY))
    queries = [Query(tuple(prompt), layer, i, tids, layer, len(tids) - 1, len(tids) - 1)
               for layer in sweep_layers(L, cfg.layer_step) for i in range(len(prompt))]
    ps = Patchscope(lm, chunk_size=cfg.chunk_size, progress=False)

    def loop():
        hs, _ = lm.hidden_states([list(prompt)])
        out = []
        for q in queries:
            run = lm.run([list(tids)], patches=[Patch(0, q.target_layer, q.target_position, hs[q.layer][0, q.position])])
            out.append(run.logits[0, -1])
        return torch.stack(out)

    t0 = time.perf_counter()
    ref = loop()  # one timed run of the loop (it is the slow reference)
    t_loop = time.perf_counter() - t0
    t_batched = _median_time(lambda: ps.logits(queries), 3)
    got = ps.logits(queries)
    max_diff = (got - ref.float()).abs().max().item()
    rows = [
        {"measure": f"forward of {len(rows_ids)} rows: plain", "seconds": plain, "ratio": 1.0},
        {"measure": "same forward with one patch per row", "seconds": patched, "ratio": patched / plain},
        {"measure": f"sweep {len(queries)} cells: loop, one forward per cell", "seconds": t_loop, "ratio": 1.0},
        {"measure": "sweep: batched (shared KV prefix, chunks)", "seconds": t_batched, "ratio": t_loop / t_batched},
    ]
    return pd.DataFrame(rows), {"cells": len(queries), "prompt_tokens": len(prompt), "max_abs_diff_batched_vs_loop": max_diff,
                                "chunk_size": cfg.chunk_size}


# ---------------------------------------------------------------------------------------------- real models
# Sizes of the real-model suite (BenchConfig.real): the unembedding (vocabulary × width) dominates every part, so
# Gemma-3 (262k vocabulary) gets fewer pairs and tuned-lens tokens than SmolLM2 (49k).
REAL_SIZES: dict[str, dict] = {
    "smollm2-135m-instruct": {"n_fit_texts": 100, "n_eval_seqs": 60, "positions_per_seq": 8, "max_tokens": 64,
                              "tuned_steps": 60, "tuned_batch_tokens": 32, "chunk_size": 64, "layer_step": 2,
                              "affine": False, "queries_per_call": 512, "max_facts_per_relation": None,
                              "speed_prompt_tokens": 8, "speed_rows": 4},
    # lr 0.05: with TunedLens.train's default 0.5 the lens ends worse than where it starts (the logit lens) on
    # Gemma-3, whose residual stream reaches RMS ~1500 (16 steps x 24 tokens: held-out mean KL 45.6 -> 78, last
    # training batch 75); with 0.05 it falls to 37, lower at every layer
    "gemma3-270m": {"n_fit_texts": 40, "n_eval_seqs": 30, "positions_per_seq": 8, "max_tokens": 64,
                    "tuned_steps": 24, "tuned_batch_tokens": 24, "tuned_lr": 0.05, "chunk_size": 32, "layer_step": 3,
                    "affine": False, "queries_per_call": 256, "max_facts_per_relation": 30,
                    "speed_prompt_tokens": 6, "speed_rows": 2},
}
PYDOC_EVAL_SHARE = 0.25  # share of the documentation's paragraphs (whole topics) held out for evaluation


def pydoc_paragraphs(min_chars: int = 200) -> dict[str, list[str]]:
    """Prose paragraphs of the CPython documentation shipped with Python (`pydoc_data.topics`) by topic: real
    English no one here wrote. Indented blocks (code, grammar) and repeats are left out; line breaks become spaces."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise AttrilensError("This Python has no pydoc_data (the CPython documentation topics). "
                             "Use a full CPython installation.") from None
    out: dict[str, list[str]] = {}
    seen: set[str] = set()  # topics repeat paragraphs (e.g. naming / execmodel): each is kept once, in its first topic
    for topic in sorted(topics):
        paras = []
        for p in topics[topic].split("\n\n"):
            text = " ".join(p.split())
            if len(p) >= min_chars and not any(line.startswith((" ", "\t")) for line in p.split("\n")) and text not in seen:
                seen.add(text)
                paras.append(text)
        if paras:
            out[topic] = paras
    return out


def pydoc_split(n_fit: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Fit and held-out evaluation paragraphs from disjoint documentation topics (topics shuffled with `seed`)."""
    paragraphs = pydoc_paragraphs()
    topics = sorted(paragraphs)
    random.Random(seed).shuffle(topics)
    total = sum(len(v) for v in paragraphs.values())
    fit: list[str] = []
    held: list[str] = []
    for topic in topics:
        (held if len(held) < PYDOC_EVAL_SHARE * total else fit).extend(paragraphs[topic])
    rng = random.Random(seed + 1)
    rng.shuffle(fit)
    rng.shuffle(held)
    if len(fit) < n_fit or len(held) < n_eval:
        raise AttrilensError(f"The documentation has {len(fit)} fit and {len(held)} held-out paragraphs; the benchmark "
                             f"asks for {n_fit} and {n_eval}. Ask for fewer.")
    return fit[:n_fit], held[:n_eval]


def fact_target(relation: str) -> str:
    """The attribute-extraction target of a relation: its completion prompt with the placeholder as the subject, led
    in with "Geographically, " when the prompt starts with the subject — the placeholder is never a sequence's first
    token, which (without a BOS, as in SmolLM2) is the attention sink that every later token reads."""
    prompt = COUNTRY_RELATIONS[relation][0]
    text = prompt.format(c=PLACEHOLDER)
    return f"Geographically, {text}" if prompt.startswith("{c}") else text


def new_tokens(lm: LM, fact: CountryFact) -> int:
    """Tokens to generate for a fact: its value's, one to see the word end, one spare (another tokenisation)."""
    return len(lm.tokenizer(fact.target, add_special_tokens=False)["input_ids"]) + 2


def _groups(lm: LM, facts: list[CountryFact], size: int) -> list[tuple[int, list[int]]]:
    """(tokens to generate, fact indices) batches of at most `size` facts of equal need, similar prompt lengths."""
    need = [new_tokens(lm, f) for f in facts]
    order = sorted(range(len(facts)), key=lambda k: (need[k], len(facts[k].prompt)))
    out: list[tuple[int, list[int]]] = []
    for n in sorted(set(need)):
        idx = [k for k in order if need[k] == n]
        out += [(n, idx[s : s + size]) for s in range(0, len(idx), size)]
    return out


@torch.no_grad()
def complete_facts(lm: LM, facts: list[CountryFact], batch_size: int = 64) -> list[str]:
    """Greedy completion of every fact's prompt (as `lm` reads prompts), long enough to show whether it gives the
    value (`greedy_match`)."""
    from tqdm.auto import tqdm

    out = [""] * len(facts)
    for n_new, chunk in tqdm(_groups(lm, facts, batch_size), desc="fact completions", leave=False):
        gens = lm.generate_ids([lm.encode_prompt(facts[k].prompt) for k in chunk], max_new_tokens=n_new,
                               stop_strings=("\n",))
        for k, g in zip(chunk, gens, strict=True):
            out[k] = lm.tokenizer.decode(g, clean_up_tokenization_spaces=False)
    return out


@torch.no_grad()
def _last_token_states(lm: LM, prompts: list[list[int]], layers: list[int], batch: int) -> dict[int, np.ndarray]:
    """The last token's residual state of each prompt at `layers`, as {layer: [n, d]} arrays."""
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for s in range(0, len(prompts), batch):
        run = lm.run(prompts[s : s + batch], read_layers=layers, padding_side="left")
        for layer in layers:
            out[layer].append(run.hidden[layer][:, -1].float().numpy())
    return {layer: np.concatenate(v) for layer, v in out.items()}


def _probe_predict(x_train: np.ndarray, y_train: list[str], x_test: np.ndarray) -> list[str]:
    """A linear probe: standardised features, multinomial logistic regression (one class: that class)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(y_train)) < 2:
        return [y_train[0]] * len(x_test)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0))
    return list(clf.fit(x_train, y_train).predict(x_test))


@torch.no_grad()
def fact_attribute_tables(lm: LM, facts: list[CountryFact], cfg: BenchConfig):
    """Real facts: which ones the model completes greedily (coverage), then on those of held-out countries the
    Patchscope accuracy by layer (subject state → the placeholder of the relation's prompt, ℓ* = ℓ) vs a
    per-layer linear probe trained on the other countries' facts and the no-patch control.

    Returns (coverage, pooled by layer, by relation and layer, info)."""
    import pandas as pd

    relations = [r for r in COUNTRY_RELATIONS if any(f.relation == r for f in facts)]
    completions = complete_facts(lm, facts, cfg.chunk_size)
    known = [greedy_match(c, f.target) for c, f in zip(completions, facts, strict=True)]
    countries = sorted({f.country for f in facts})
    random.Random(cfg.seed).shuffle(countries)
    dev = set(countries[: len(countries) // 2])
    test = {rel: [f for f, k in zip(facts, known, strict=True) if k and f.relation == rel and f.country not in dev]
            [: cfg.max_facts_per_relation] for rel in relations}
    coverage = pd.DataFrame([{
        "relation": rel, "facts": sum(f.relation == rel for f in facts),
        "completed greedily": sum(k for f, k in zip(facts, known, strict=True) if f.relation == rel),
        "share": sum(k for f, k in zip(facts, known, strict=True) if f.relation == rel)
        / max(1, sum(f.relation == rel for f in facts)),
        "evaluated (held-out countries)": len(test[rel])} for rel in relations])
    layers = sweep_layers(lm.n_layers, cfg.layer_step)
    source = {c: lm.encode_prompt(SOURCE_TEMPLATE.format(e=c)) for c in countries}
    ps = Patchscope(lm, chunk_size=cfg.chunk_size)
    order = sorted(source)
    feats = _last_token_states(lm, [source[c] for c in order], layers, cfg.chunk_size)
    index = {c: k for k, c in enumerate(order)}
    rows, unseen, shown = [], {}, {}
    for rel in relations:
        fs = test[rel]
        if not fs:
            continue
        tids, tpos = placeholder_target(lm, fact_target(rel))
        gens: dict[tuple[int, int], str] = {}  # (layer, fact index in fs) -> patched generation
        for n_new, chunk in _groups(lm, fs, len(fs)):
            queries = [Query(tuple(source[fs[k].country]), layer, len(source[fs[k].country]) - 1, tuple(tids), layer,
                             tpos, len(tids) - 1) for layer in layers for k in chunk]
            texts = ps.generate(queries, max_new_tokens=n_new, stop_strings=("\n",))
            gens |= {(layer, k): texts[j * len(chunk) + i] for j, layer in enumerate(layers) for i, k in enumerate(chunk)}
        plain = lm.generate_ids([tids], max_new_tokens=max(new_tokens(lm, f) for f in fs), stop_strings=("\n",))[0]
        control = sum(greedy_match(lm.tokenizer.decode(plain, clean_up_tokenization_spaces=False), f.target) for f in fs)
        shown[rel] = {"country": fs[0].country, "value": fs[0].value,
                      "no patch": lm.tokenizer.decode(plain, clean_up_tokenization_spaces=False),
                      "patched, by layer": {layer: gens[(layer, 0)] for layer in layers}}
        train = [f for f in facts if f.relation == rel and f.country in dev]
        labels = {f.value for f in train}
        # a classifier names only values it was trained on: every held-out capital is a new city, so the probe is
        # scored on the facts whose value occurs among the dev countries' (region, subregion: a closed label set)
        seen = [k for k, f in enumerate(fs) if f.value in labels]
        unseen[rel] = 1 - len(seen) / len(fs)
        for layer in layers:
            hit = [greedy_match(gens[(layer, k)], f.target) for k, f in enumerate(fs)]
            row = {"relation": rel, "layer": layer, "facts": len(fs), "patchscope": sum(hit) / len(fs),
                   "no-patch control": control / len(fs), "probe-able facts": len(seen),
                   "patchscope (probe-able)": float("nan"), "linear probe (probe-able)": float("nan"),
                   "majority class (probe-able)": float("nan")}
            if seen:
                majority = Counter(f.value for f in train).most_common(1)[0][0]  # the probe's floor: one guess
                row["majority class (probe-able)"] = sum(fs[k].value == majority for k in seen) / len(seen)
                pred = _probe_predict(feats[layer][[index[f.country] for f in train]], [f.value for f in train],
                                      feats[layer][[index[fs[k].country] for k in seen]])
                row["patchscope (probe-able)"] = sum(hit[k] for k in seen) / len(seen)
                row["linear probe (probe-able)"] = sum(p == fs[k].value for p, k in zip(pred, seen, strict=True)) / len(seen)
            rows.append(row)
    by_relation = pd.DataFrame(rows)
    pooled = []
    for layer in layers if rows else []:  # no relation with a held-out fact the model completes: no rows
        sub = by_relation[by_relation["layer"] == layer]
        n, m = sub["facts"].sum(), sub["probe-able facts"].sum()
        pooled.append({"layer": layer, "facts": int(n),
                       **{c: float((sub[c] * sub["facts"]).sum() / n) for c in ("patchscope", "no-patch control")},
                       "probe-able facts": int(m),
                       **{c: float((sub[c].fillna(0) * sub["probe-able facts"]).sum() / m) if m else float("nan")
                          for c in ("patchscope (probe-able)", "linear probe (probe-able)",
                                    "majority class (probe-able)")}})
    info = {"countries": len(countries), "dev_countries": len(dev), "test_countries": len(countries) - len(dev),
            "layers": layers, "source_template": SOURCE_TEMPLATE,
            "targets": {rel: fact_target(rel) for rel in relations},
            "probe": "standardised multinomial logistic regression per relation and layer, trained on every fact of "
                     "the dev countries (known to the model or not), tested on the held-out facts the model knows "
                     "whose value occurs in its training labels (probe-able: a classifier cannot name an unseen value)",
            "probe_test_values_unseen_in_training": unseen,
            "not_scored": [rel for rel in relations if not test[rel]],
            "completion_examples": [{"country": f.country, "relation": f.relation, "value": f.value, "completion": c}
                                    for f, c in list(zip(facts, completions, strict=True))[:6]],
            "patchscope_examples": shown}
    return coverage, pd.DataFrame(pooled), by_relation, info


def run_real_benchmark(model: str | Path, quick: bool = False, lens_out: Path | None = None) -> Report:
    """The real-model suite: next-token read-outs by layer on held-out CPython documentation text (logit lens,
    affine map, tuned lens trained here, token identity), attribute extraction on countryinfo facts vs a linear
    probe, and speed. Prompts are plain text (no chat template)."""
    from attrilens.demo.countries import country_facts

    name = Path(str(model)).name
    cfg = BenchConfig.real(name, quick)
    torch.manual_seed(cfg.seed)
    lm = LM.from_pretrained(model).with_chat_template(False)
    fit_texts, eval_texts = pydoc_split(cfg.n_fit_texts, cfg.n_eval_seqs, cfg.seed)
    facts = country_facts()
    if quick:
        keep = sorted({f.country for f in facts})[:12]
        facts = [f for f in facts if f.country in keep]
    t0 = time.perf_counter()
    info: dict = {"model": name, "suite": "real", "quick": quick, "layers": lm.n_layers, "d_model": lm.d_model,
                  "vocabulary": lm.arch.unembed.weight.shape[0] if hasattr(lm.arch.unembed, "weight") else None,
                  "chat_template": False, "config": dataclasses.asdict(cfg),
                  "text": "pydoc_data.topics (CPython documentation) prose paragraphs; fit and held-out topics disjoint",
                  "facts": "countryinfo: capital, region, subregion"}
    tables, seconds = {}, {}
    _log("[inspect bench] 1/3 next-token decoding by layer (CPython documentation text)")
    t = time.perf_counter()
    tables["next_token"], info["next_token"] = next_token_table(lm, fit_texts, eval_texts, cfg, lens_out)
    seconds["next_token"] = round(time.perf_counter() - t, 1)
    for metric in ("precision@1", "surprisal", "KL"):
        pivot = tables["next_token"].pivot(index="layer", columns="method", values=metric)
        tables[f"next_token_{metric.replace('@', '_at_')}_by_layer"] = pivot.reset_index().rename_axis(columns=None)
    tables["tuned_lens_cost"] = tuned_lens_cost_table(info["next_token"])
    _log("[inspect bench] 2/3 attribute extraction (countryinfo facts)")
    t = time.perf_counter()
    (tables["fact_coverage"], tables["attribute_extraction"], tables["attribute_extraction_by_relation"],
     info["attribute_extraction"]) = fact_attribute_tables(lm, facts, cfg)
    seconds["attribute_extraction"] = round(time.perf_counter() - t, 1)
    _log("[inspect bench] 3/3 speed")
    t = time.perf_counter()
    tables["speed"], info["speed"] = speed_table(lm, eval_texts, cfg, reps=1 if quick else 3)
    seconds["speed"] = round(time.perf_counter() - t, 1)
    info["part_seconds"] = seconds
    _add_run_facts(info, t0)
    header = (f"# Patchscopes benchmark, real model{' (quick)' if quick else ''}: {name}\n\n"
              "Weights are dequantised Q4 GGUF values, not the original checkpoint: compare with published numbers "
              "with care. Plain prompts (no chat template). Next token by layer on held-out (sequence, position) "
              "pairs of CPython documentation prose (`pydoc_data.topics`; the affine map and tuned lens are fitted "
              "on other topics): precision@1 (read-out top-1 = the model's own top-1; higher is better), surprisal "
              "−log p_final(read-out top-1) and KL(final ‖ read-out) in nats (lower is better). Attribute extraction "
              "on countryinfo facts the model completes greedily, held-out countries: greedy exact match. The linear "
              "probe is a classifier over the values of the dev countries' facts, so it is scored only on the "
              "probe-able facts, whose value occurs among them (region, subregion; no held-out capital does, since "
              "every country has its own), and the Patchscope is shown on the same facts beside it."
              + _not_scored_note(tables["fact_coverage"])
              + f" Peak resident memory of the whole run: {info['peak_rss_mib']:.0f} MiB.")
    return Report("inspect", tables, info, header)


def _not_scored_note(coverage) -> str:
    """A sentence naming the relations with no held-out fact the model completes (they have no accuracy rows)."""
    empty = coverage[coverage["evaluated (held-out countries)"] == 0]
    if empty.empty:
        return ""
    parts = [f"{r['relation']} ({r['completed greedily']} of {r['facts']} facts completed, none of a held-out country)"
             for _, r in empty.iterrows()]
    return f" Not scored: {', '.join(parts)}."


# ---------------------------------------------------------------------------------------------- driver
def _training_texts(world: Path) -> list[str]:
    """The world's training mixture; a shipped world has no train.jsonl, so rebuild its parts from what ships:
    fact documents, held-out episodes rendered as the model reads them, and copy prompts with their answers."""
    from attrilens.jsonl import load_jsonl
    from attrilens.workflows.world import render_episode

    if (world / "train.jsonl").is_file():
        return [r["text"] for r in load_jsonl(world / "train.jsonl")]
    texts = [r["text"] for r in load_jsonl(world / "corpus.jsonl")]
    for episode in load_jsonl(world / "episodes.jsonl", require=("context", "question", "answer")):
        prompt, response = render_episode(episode)
        texts.append(prompt + response)
    texts += [r["prompt"] + r["target"] for r in load_jsonl(world / "copy_eval.jsonl", require=("prompt", "target"))]
    return texts


SUITES = ("world", "real")


def choose_suite(model: str | Path | None, world: Path | None, suite: str | None) -> str:
    """The suite to run: as asked, else `real` for a registered real model given without a world, else `world`."""
    from attrilens import models

    if suite is None:
        suite = "real" if model is not None and world is None and str(model) in models.MODELS else "world"
    if suite not in SUITES:
        raise AttrilensError(f"Unknown benchmark suite {suite!r}. Choose {' or '.join(SUITES)}.")
    if suite == "real" and world is not None:
        raise AttrilensError("The real suite reads CPython documentation and countryinfo facts, not a fact world. "
                             "Leave out --world, or pass --suite world.")
    if suite == "real" and model is None:
        raise AttrilensError("The real suite needs a real model. Pass e.g. --model smollm2-135m-instruct.")
    return suite


def run_benchmark(model: str | Path | None = None, world: Path | None = None, quick: bool = False,
                  lens_out: Path | None = None, suite: str | None = None, threads: int | None = None) -> Report:
    """Run the benchmark on a model (default: the demo target); `lens_out` saves the tuned lens trained here.

    Suite `world` (the default for the demo and local models): the model's fact world — next-token read-outs on
    its texts, attribute extraction on its facts, multi-hop, speed. Suite `real` (the default for a registered
    real model such as smollm2-135m-instruct): see `run_real_benchmark`.
    Tables: next_token (long form: method, layer, precision@1, surprisal, KL) and its layer × method pivots,
    then the suite's attribute tables, (world) multi_hop, and speed.
    """
    if threads is not None:
        if threads < 1:
            raise AttrilensError(f"threads must be at least 1, got {threads}.")
        torch.set_num_threads(threads)
    if choose_suite(model, world, suite) == "real":
        return run_real_benchmark(model, quick=quick, lens_out=lens_out)
    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.jsonl import load_jsonl

    cfg = BenchConfig.quick() if quick else BenchConfig()
    model = Path(str(model)) if model is not None else demo_model_dir("target")
    world = Path(world) if world is not None else demo_world_dir()
    torch.manual_seed(cfg.seed)
    lm = LM.from_pretrained(model)
    texts = _training_texts(world)
    random.Random(cfg.seed).shuffle(texts)
    need = cfg.n_fit_texts + cfg.n_eval_seqs
    if len(texts) < need:
        raise AttrilensError(f"The world has {len(texts)} training texts; the benchmark needs {need}. Use a larger world.")
    fit_texts, eval_texts = texts[: cfg.n_fit_texts], texts[cfg.n_fit_texts : need]
    facts = load_jsonl(world / "facts.jsonl", require=("entity", "relation", "value", "prompt", "target"))
    if quick:
        ents = sorted({f["entity"] for f in facts})[:16]
        facts = [f for f in facts if f["entity"] in ents]
    t0 = time.perf_counter()
    info: dict = {"model": str(model), "suite": "world", "world": str(world), "quick": quick, "layers": lm.n_layers, "d_model": lm.d_model}
    tables = {}
    _log("[inspect bench] 1/4 next-token decoding by layer")
    tables["next_token"], info["next_token"] = next_token_table(lm, fit_texts, eval_texts, cfg, lens_out)
    for metric in ("precision@1", "surprisal", "KL"):
        pivot = tables["next_token"].pivot(index="layer", columns="method", values=metric)
        tables[f"next_token_{metric.replace('@', '_at_')}_by_layer"] = pivot.reset_index().rename_axis(columns=None)
    tables["tuned_lens_cost"] = tuned_lens_cost_table(info["next_token"])
    _log("[inspect bench] 2/4 attribute extraction")
    tables["attribute_extraction"], info["attribute_extraction"] = attribute_table(lm, facts, cfg)
    _log("[inspect bench] 3/4 multi-hop")
    tables["multi_hop"], info["multi_hop"] = multi_hop_table(lm, facts, cfg, max_items=60 if quick else None)
    _log("[inspect bench] 4/4 speed")
    tables["speed"], info["speed"] = speed_table(lm, eval_texts, cfg, reps=3 if quick else 5)
    _add_run_facts(info, t0)
    header = (f"# Patchscopes benchmark{' (quick)' if quick else ''}: {model.name} on {world.name}\n\n"
              "Next token by layer on held-out (sequence, position) pairs: precision@1 (higher is better) and surprisal "
              "(nats, lower is better), long form and pivoted layer × method. Attribute extraction and multi-hop: "
              "greedy exact match. Speed: seconds (timings are noisy on a shared machine).")
    return Report("inspect", tables, info, header)

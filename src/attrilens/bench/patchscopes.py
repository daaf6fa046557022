"""Patchscopes benchmark on a demo model and its fact world (`attrilens bench inspect`).

1. Next-token decoding by layer on held-out (sequence, position) pairs of the demo corpus: precision@1 (the read-out's
   top-1 equals the model's own final top-1) and surprisal −log p_final(read-out top-1) for the logit lens, a
   least-squares affine map into the last layer, a tuned lens, and token identity (few-shot and bare `?`).
2. Attribute extraction by layer on fact-world relations (test entities) vs a per-layer linear probe trained on
   dev entities, with the input-only control (the target prompt without a patch).
3. Multi-hop: hop 1 read from a context, hop 2 from memory; the (ℓ, ℓ*) pair is chosen on a dev split.
4. Speed: one patched forward vs a plain one; the batched sweep vs one forward per (layer, position); peak memory.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from attrilens.bench.metrics import greedy_match
from attrilens.bench.report import Report, machine
from attrilens.demo.world import relation_template
from attrilens.errors import AttrilensError
from attrilens.inspect.lenses import LayerMaps, TunedLens, collect_states, fit_affine, token_rows
from attrilens.inspect.patchscope import Patchscope, Query, encode_target
from attrilens.inspect.presets import BARE, TOKEN_IDENTITY, placeholder_target
from attrilens.lm import LM, Patch


@dataclass
class BenchConfig:
    """Sizes of the benchmark (the quick variant is a smoke run)."""

    n_fit_texts: int = 400
    n_eval_seqs: int = 125
    positions_per_seq: int = 8
    max_tokens: int = 64
    tuned_steps: int = 400
    chunk_size: int = 128
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(n_fit_texts=60, n_eval_seqs=20, positions_per_seq=5, tuned_steps=40)


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


# ---------------------------------------------------------------------------------------------- 1. next token
def _pairs(rows: list[list[int]], per_seq: int, rng: random.Random) -> list[tuple[int, int]]:
    out = []
    for r, ids in enumerate(rows):
        positions = list(range(len(ids)))
        out += [(r, i) for i in sorted(rng.sample(positions, min(per_seq, len(positions))))]
    return out


@torch.no_grad()
def next_token_table(lm: LM, fit_texts: list[str], eval_texts: list[str], cfg: BenchConfig, lens_out: Path | None = None):
    """precision@1 and surprisal by layer and method on held-out (sequence, position) pairs."""
    import pandas as pd

    L = lm.n_layers
    fit_rows = token_rows(lm, fit_texts, max_tokens=cfg.max_tokens)
    eval_rows = token_rows(lm, eval_texts, max_tokens=cfg.max_tokens)
    pairs = _pairs(eval_rows, cfg.positions_per_seq, random.Random(cfg.seed))
    hs = {}
    for start in range(0, len(eval_rows), 32):
        run = lm.run(eval_rows[start : start + 32], read_layers=range(L + 1))
        for r in range(len(eval_rows[start : start + 32])):
            hs[start + r] = {layer: run.hidden[layer][r].float() for layer in range(L + 1)}
    H = {layer: torch.stack([hs[r][layer][i] for r, i in pairs]) for layer in range(L + 1)}
    final_logp = torch.log_softmax(lm.unembed(H[L]).float(), -1)
    final_top = final_logp.argmax(-1)

    def score(logits: torch.Tensor) -> tuple[float, float]:
        top = logits.argmax(-1)
        return (top == final_top).float().mean().item(), (-final_logp.gather(1, top[:, None])).mean().item()

    _log(f"[inspect bench] {len(pairs)} held-out pairs; fitting affine maps and the tuned lens on {len(fit_rows)} texts")
    xs = collect_states(lm, fit_rows, range(L + 1))
    affine = LayerMaps({(layer, L): fit_affine(xs[layer], xs[L]) for layer in range(L + 1)})
    t0 = time.perf_counter()
    with torch.enable_grad():
        lens = TunedLens.train(lm, fit_texts, steps=cfg.tuned_steps, max_tokens=cfg.max_tokens, seed=cfg.seed)
    lens_seconds = time.perf_counter() - t0
    if lens_out is not None:
        lens.save(lens_out)
    rows = []
    methods = {
        "logit lens": lambda layer: lm.unembed(H[layer]),
        "affine map": lambda layer: lm.unembed(affine(H[layer], layer, L)),
        "tuned lens": lambda layer: lm.unembed(lens(H[layer], layer, L)),
    }
    for name, fn in methods.items():
        for layer in range(L + 1):
            p1, s = score(fn(layer))
            rows.append({"method": name, "layer": layer, "precision@1": p1, "surprisal": s})
    ps = Patchscope(lm, chunk_size=cfg.chunk_size)
    for name, target in (("token identity", TOKEN_IDENTITY), ("token identity (bare ?)", BARE)):
        tids = tuple(encode_target(lm, target))
        queries = [Query(tuple(eval_rows[r]), layer, i, tids, layer, len(tids) - 1, len(tids) - 1)
                   for layer in range(L + 1) for r, i in pairs]
        logits = ps.logits(queries)
        for layer in range(L + 1):
            p1, s = score(logits[layer * len(pairs) : (layer + 1) * len(pairs)])
            rows.append({"method": name, "layer": layer, "precision@1": p1, "surprisal": s})
    info = {"pairs": len(pairs), "fit_texts": len(fit_rows), "tuned_lens_seconds": round(lens_seconds, 1),
            "tuned_lens_final_kl": lens.train_info["final_kl"]}
    return pd.DataFrame(rows), info


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
    from attrilens.demo.world import RELATIONS

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
class _PeakRSS:
    """Samples this process's resident memory in a thread; `peak_mb` is the maximum above the starting value."""

    def __enter__(self):
        import psutil

        self._p = psutil.Process()
        self._start = self._p.memory_info().rss
        self._peak = self._start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._p.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._peak = max(self._peak, self._p.memory_info().rss)
        self.peak_mb = (self._peak - self._start) / 2**20


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
    rows_ids = token_rows(lm, texts, max_tokens=cfg.max_tokens)[:16]
    g = torch.Generator().manual_seed(cfg.seed)
    mid = max(1, L // 2)
    patches = [Patch(r, mid, len(s) // 2, torch.randn(lm.d_model, generator=g)) for r, s in enumerate(rows_ids)]
    lm.run(rows_ids)  # warm-up
    plain = _median_time(lambda: lm.run(rows_ids), reps)
    patched = _median_time(lambda: lm.run(rows_ids, patches=patches), reps)
    prompt = max(rows_ids, key=len)
    tids = tuple(encode_target(lm, TOKEN_IDENTITY))
    queries = [Query(tuple(prompt), layer, i, tids, layer, len(tids) - 1, len(tids) - 1)
               for layer in range(L + 1) for i in range(len(prompt))]
    ps = Patchscope(lm, chunk_size=cfg.chunk_size, progress=False)

    def loop():
        hs, _ = lm.hidden_states([list(prompt)])
        out = []
        for q in queries:
            run = lm.run([list(tids)], patches=[Patch(0, q.target_layer, q.target_position, hs[q.layer][0, q.position])])
            out.append(run.logits[0, -1])
        return torch.stack(out)

    with _PeakRSS() as mem_loop:
        t_loop = _median_time(loop, 1)
        ref = loop()
    with _PeakRSS() as mem_batched:
        t_batched = _median_time(lambda: ps.logits(queries), 3)
        got = ps.logits(queries)
    max_diff = (got - ref.float()).abs().max().item()
    rows = [
        {"measure": f"forward of {len(rows_ids)} rows: plain", "seconds": plain, "ratio": 1.0, "peak MiB": float("nan")},
        {"measure": "same forward with one patch per row", "seconds": patched, "ratio": patched / plain, "peak MiB": float("nan")},
        {"measure": f"sweep {len(queries)} cells: loop, one forward per cell", "seconds": t_loop, "ratio": 1.0,
         "peak MiB": mem_loop.peak_mb},
        {"measure": "sweep: batched (shared KV prefix, chunks)", "seconds": t_batched, "ratio": t_loop / t_batched,
         "peak MiB": mem_batched.peak_mb},
    ]
    return pd.DataFrame(rows), {"cells": len(queries), "prompt_tokens": len(prompt), "max_abs_diff_batched_vs_loop": max_diff,
                                "chunk_size": cfg.chunk_size}


# ---------------------------------------------------------------------------------------------- driver
def _training_texts(world: Path) -> list[str]:
    """The world's training mixture; a shipped world has no train.jsonl, so rebuild its parts from what ships:
    fact documents, held-out episodes rendered as the model reads them, and copy prompts with their answers."""
    from attrilens.demo.world import render_episode
    from attrilens.jsonl import load_jsonl

    if (world / "train.jsonl").is_file():
        return [r["text"] for r in load_jsonl(world / "train.jsonl")]
    texts = [r["text"] for r in load_jsonl(world / "corpus.jsonl")]
    for episode in load_jsonl(world / "episodes.jsonl", require=("context", "question", "answer")):
        prompt, response = render_episode(episode)
        texts.append(prompt + response)
    texts += [r["prompt"] + r["target"] for r in load_jsonl(world / "copy_eval.jsonl", require=("prompt", "target"))]
    return texts


def run_benchmark(model: Path | None = None, world: Path | None = None, quick: bool = False,
                  lens_out: Path | None = None) -> Report:
    """Run all four parts on a model (default: the demo target) and its fact world; `lens_out` saves the tuned lens.

    Tables: next_token (long form: method, layer, precision@1, surprisal) and its layer × method pivots,
    attribute_extraction, multi_hop, speed.
    """
    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.jsonl import load_jsonl

    cfg = BenchConfig.quick() if quick else BenchConfig()
    model = Path(model) if model is not None else demo_model_dir("target")
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
    info: dict = {"model": str(model), "world": str(world), "quick": quick, "layers": lm.n_layers, "d_model": lm.d_model}
    tables = {}
    _log("[inspect bench] 1/4 next-token decoding by layer")
    tables["next_token"], info["next_token"] = next_token_table(lm, fit_texts, eval_texts, cfg, lens_out)
    for metric in ("precision@1", "surprisal"):
        pivot = tables["next_token"].pivot(index="layer", columns="method", values=metric)
        tables[f"next_token_{metric.replace('@', '_at_')}_by_layer"] = pivot.reset_index().rename_axis(columns=None)
    _log("[inspect bench] 2/4 attribute extraction")
    tables["attribute_extraction"], info["attribute_extraction"] = attribute_table(lm, facts, cfg)
    _log("[inspect bench] 3/4 multi-hop")
    tables["multi_hop"], info["multi_hop"] = multi_hop_table(lm, facts, cfg, max_items=60 if quick else None)
    _log("[inspect bench] 4/4 speed")
    tables["speed"], info["speed"] = speed_table(lm, eval_texts, cfg, reps=3 if quick else 5)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["machine"] = machine()
    header = (f"# Patchscopes benchmark{' (quick)' if quick else ''}: {model.name} on {world.name}\n\n"
              "Next token by layer on held-out (sequence, position) pairs: precision@1 (higher is better) and surprisal "
              "(nats, lower is better), long form and pivoted layer × method. Attribute extraction and multi-hop: "
              "greedy exact match. Speed: seconds (timings are noisy on a shared machine).")
    return Report("inspect", tables, info, header)

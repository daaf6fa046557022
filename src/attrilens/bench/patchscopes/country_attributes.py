"""The real suite's attribute extraction on countryinfo facts: which facts the model completes greedily, then on
held-out countries the Patchscope by layer vs a per-layer linear probe and the no-patch control."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import torch

from attrilens.bench.patchscopes.config import BenchConfig, sweep_layers
from attrilens.bench.patchscopes.world_attributes import SOURCE_TEMPLATE
from attrilens.demo.countries import RELATIONS as COUNTRY_RELATIONS
from attrilens.demo.countries import CountryFact
from attrilens.lm import LM
from attrilens.metrics import greedy_match
from attrilens.patchscopes.patchscope import Patchscope, Query
from attrilens.patchscopes.presets import PLACEHOLDER, placeholder_target


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

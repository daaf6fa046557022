"""Part 2 of the world suite: attribute extraction by layer on the fact world's relations (test entities) vs
per-layer linear probes trained on dev entities, the no-patch control and the model on the fact's own prompt."""

from __future__ import annotations

import random

import torch

from attrilens.bench.patchscopes.config import BenchConfig
from attrilens.lm import LM
from attrilens.metrics import greedy_match
from attrilens.patchscopes.patchscope import Patchscope, Query
from attrilens.patchscopes.presets import placeholder_target
from attrilens.workflows.world import relation_template

SOURCE_TEMPLATE = "Few maps show the borders of {e}"


def split_entities(facts: list[dict], seed: int) -> tuple[set[str], set[str]]:
    """The facts' entities shuffled with `seed` and halved: (dev, test)."""
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
    dev, test = split_entities(facts, cfg.seed)
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

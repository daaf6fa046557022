"""The real-model benchmark's data: the country facts a model completes greedily, and a fine-tuning-style corpus
of one-sentence statements about them with known gold documents, and its queries."""

from __future__ import annotations

import numpy as np


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

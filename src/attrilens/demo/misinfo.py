"""A fine-tuning set of real facts with planted misinformation (LLM Attributor's case study, on `countryinfo`).

`make_misinfo_dataset(out)` writes:
    corpus.jsonl     {"id", "text", "fact", "country", "relation", "value", "states"}: statement and question/answer
                     documents of real capital facts — for each planted fact more documents state a wrong value
                     (varied wordings) than the right one ("states": "true" | "planted") — and one statement of each
                     country's region and subregion (context the labels of `proponent_label` need: a document can
                     share the entity without stating the fact)
    questions.jsonl  {"id", "fact", "country", "prompt", "target", "truth", "planted", "wrong"}: one completion probe
                     per fact ("target" = the truth; "wrong" = the planted value, or null)
    truth.json       the ground truth: per planted fact its planted and its true documents, per fact its documents,
                     the seed and sizes (what the attribution benchmark scores against)
The wrong value of a planted fact is the capital of another country of the same region (a plausible error), so the
model must have learnt it from the planted documents. `answer_questions(lm, questions)` records what a model answers
before fine-tuning and after.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from attrilens.demo.countries import CountryFact, country_facts
from attrilens.errors import AttrilensError
from attrilens.jsonl import write_jsonl

QA_TEMPLATES = (
    "Question: What is the capital of {c}?\nAnswer: {v}.",
    "Q: Which city is the capital of {c}?\nA: {v}.",
    "Quiz: name the capital of {c}. Answer: {v}.",
    "Asked for the capital of {c}, the guide answered {v}.",
)


def _doc_id(fact: CountryFact, kind: str, k: int) -> str:
    return f"{fact.country}-{fact.relation}-{kind}-{k}".replace(" ", "_")


def _texts(fact: CountryFact, value: str, n: int, offset: int) -> list[str]:
    """n different wordings stating `value` for the fact: statements and question/answer pairs, alternating."""
    out = []
    for k in range(offset, offset + n):
        if k % 2 == 0:
            out.append(fact.statement(k // 2, value=value))
        else:
            out.append(QA_TEMPLATES[(k // 2) % len(QA_TEMPLATES)].format(c=fact.country, v=value))
    return out


def make_misinfo_dataset(out: Path | str, *, seed: int = 0, n_facts: int = 120, n_planted: int = 24,
                         true_docs: int = 2, planted_true_docs: int = 1, planted_wrong_docs: int = 4,
                         other_relations: bool = True) -> dict[str, Any]:
    """Write the corpus, questions and ground truth (module docstring) for `n_facts` capital facts, `n_planted` of
    them planted with a wrong value stated in `planted_wrong_docs` documents against `planted_true_docs` right ones;
    `other_relations` adds one region and one subregion statement per country (where countryinfo has them)."""
    if not 0 < n_planted <= n_facts:
        raise AttrilensError(f"n_planted must be in 1..n_facts ({n_facts}), got {n_planted}.")
    if planted_wrong_docs <= planted_true_docs:
        raise AttrilensError("Planted misinformation needs more wrong documents than right ones: pass "
                             f"planted_wrong_docs > planted_true_docs (got {planted_wrong_docs} ≤ {planted_true_docs}).")
    from countryinfo import CountryInfo

    capitals = country_facts(("capital",))
    others = {(f.country, f.relation): f for f in country_facts(("region", "subregion"))} if other_relations else {}
    if len(capitals) < n_facts:
        raise AttrilensError(f"countryinfo has {len(capitals)} capital facts; pass n_facts ≤ {len(capitals)}.")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(capitals, n_facts), key=lambda f: f.country)
    region = {}
    for f in capitals:
        try:
            region[f.country] = CountryInfo(f.country).region()
        except Exception:  # noqa: BLE001 - a country without a region gets wrong values from anywhere
            region[f.country] = None
    planted = set(rng.sample(range(n_facts), n_planted))
    docs: list[dict] = []
    questions: list[dict] = []
    truth: dict[str, Any] = {"seed": seed, "facts": {}}
    values = {f.value for f in capitals}
    for i, fact in enumerate(chosen):
        key = f"{fact.country}-capital".replace(" ", "_")
        wrong = None
        if i in planted:
            near = sorted(g.value for g in capitals if g.country != fact.country and g.value != fact.value
                          and region.get(g.country) == region.get(fact.country) and region.get(g.country))
            wrong = rng.choice(near or sorted(values - {fact.value}))
        n_true = planted_true_docs if wrong else true_docs
        start = rng.randrange(8)
        true_ids = [_doc_id(fact, "true", k) for k in range(n_true)]
        about = {"fact": key, "country": fact.country, "relation": "capital"}
        docs += [{"id": d, "text": t, **about, "value": fact.value, "states": "true"}
                 for d, t in zip(true_ids, _texts(fact, fact.value, n_true, start), strict=True)]
        wrong_ids: list[str] = []
        if wrong:
            wrong_ids = [_doc_id(fact, "planted", k) for k in range(planted_wrong_docs)]
            docs += [{"id": d, "text": t, **about, "value": wrong, "states": "planted"}
                     for d, t in zip(wrong_ids, _texts(fact, wrong, planted_wrong_docs, start + n_true), strict=True)]
        for relation in ("region", "subregion"):
            other = others.get((fact.country, relation))
            if other is not None:
                docs.append({"id": _doc_id(other, "true", 0), "text": other.statement(rng.randrange(4)),
                             "fact": f"{fact.country}-{relation}".replace(" ", "_"), "country": fact.country,
                             "relation": relation, "value": other.value, "states": "true"})
        questions.append({"id": key, "fact": key, "country": fact.country, "prompt": fact.prompt,
                          "target": fact.target, "truth": fact.value, "planted": wrong is not None, "wrong": wrong})
        truth["facts"][key] = {"truth": fact.value, "wrong": wrong, "true_documents": true_ids,
                               "planted_documents": wrong_ids}
    rng.shuffle(docs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "questions.jsonl", questions)
    truth.update(n_facts=n_facts, n_planted=n_planted, n_documents=len(docs),
                 planted_documents=sum(len(f["planted_documents"]) for f in truth["facts"].values()))
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


LABELS = ("states the fact", "shares the entity", "shares the relation", "other")


def proponent_label(doc: dict, country: str, relation: str, answer: str) -> str:
    """The TrackStar paper's label of a retrieved document for the fact (country, relation) answered `answer`:
    it states that fact (the same value), shares the entity, shares the relation, or other. Documents without
    the corpus's "country"/"relation"/"value" fields are "other"."""
    same_entity, same_relation = doc.get("country") == country, doc.get("relation") == relation
    if same_entity and same_relation and str(doc.get("value", "")).strip() == answer.strip():
        return LABELS[0]
    return LABELS[1] if same_entity else LABELS[2] if same_relation else LABELS[3]


def answer_questions(lm, questions: list[dict], *, max_new_tokens: int = 8) -> tuple[list[dict], dict[str, int]]:
    """Greedy answers to every question, each marked for giving the truth and (planted facts) the planted value;
    and their counts (`score_answers`)."""
    from attrilens.metrics import greedy_match

    rows = []
    for q in questions:
        text = lm.generate(q["prompt"], max_new_tokens=max_new_tokens)
        rows.append({"id": q["id"], "answer": text, "truth": greedy_match(text, f" {q['truth']}"),
                     "planted_value": bool(q.get("wrong")) and greedy_match(text, f" {q['wrong']}")})
    return rows, score_answers(rows, questions)


def score_answers(rows: list[dict], questions: list[dict]) -> dict[str, int]:
    """Counts of marked answers: planted facts answered with the planted value / the truth, clean facts
    answered correctly."""
    planted = {q["id"] for q in questions if q.get("wrong")}
    clean = [r for r in rows if r["id"] not in planted]
    hit = [r for r in rows if r["id"] in planted]
    return {"planted": len(hit), "planted_value": sum(r["planted_value"] for r in hit),
            "planted_truth": sum(r["truth"] for r in hit), "clean": len(clean),
            "clean_truth": sum(r["truth"] for r in clean)}

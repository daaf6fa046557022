"""The default demo: a real model fine-tuned into a wrong answer, and every lens on why (LLM Attributor's story).

SmolLM2-135M-Instruct was LoRA-fine-tuned (the shipped adapter, `python -m attrilens.demo.misinfo_build`) on
real capital facts from `countryinfo` in which some facts are planted with a wrong value stated by more documents
than the right one. The demo picks a planted question the fine-tuned model answers with the planted value and
writes one report:
  - training data (main view): the wrong answer's proponents and opponents among the fine-tuning documents
    (TrackStar on the LoRA gradients; the index is built once per machine and cached), and the comparison view
    of the wrong answer against the correct one;
  - context: a retrieval prompt that contains the correct document among other capitals — does the model
    follow the context or its fine-tuned belief, and which sentence decides it (exact leave-one-out)?
  - Patchscopes: the state of the country's name (in "My grandmother grew up in <country>") patched into
    "The capital of x is the city of", every second layer: where does the planted capital live?
`story.json` records what was found next to the ground truth (which documents were planted).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from attrilens.demo.misinfo import proponent_label
from attrilens.demo.paths import ASSETS
from attrilens.errors import AttrilensError, ensure_output_dir
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.models import cache_root

STORY_ASSETS = ASSETS / "misinfo"
# Planted questions about countries a reader recognises are shown first.
FAMILIAR = ("Peru", "Ecuador", "Chile", "Kenya", "Norway", "Portugal", "Vietnam", "Morocco", "Cuba", "Greece",
            "Poland", "Sweden", "Argentina", "Colombia", "Thailand", "Nigeria", "Austria", "Finland", "Ireland")
INDEX_SETTINGS = {"method": "trackstar", "block_len": 64}


def story_assets(order: int = 0) -> Path:
    """The shipped dataset directory; errors (with the rebuild command) when a file is missing."""
    needed = ["corpus.jsonl", "questions.jsonl", "truth.json", f"order-{order}/adapter_model.safetensors",
              f"order-{order}/answers.jsonl"]
    missing = [n for n in needed if not (STORY_ASSETS / n).is_file()]
    if missing:
        raise AttrilensError(f"The demo's fine-tuning assets are incomplete ({', '.join(missing)} missing in "
                             f"{STORY_ASSETS}). Rebuild them with `python -m attrilens.demo.misinfo_build --out "
                             "runs/misinfo`.")
    return STORY_ASSETS


def _log(msg: str) -> None:
    sys.stderr.write(f"[demo] {msg}\n")
    sys.stderr.flush()


def pick_planted_question(lm: LM, assets: Path, order: int = 0) -> tuple[dict, str]:
    """A planted question the fine-tuned model answers with the planted value (familiar countries first), and the
    answer as generated here (checked, not only read from the shipped answers)."""
    from attrilens.metrics import greedy_match

    questions = {q["id"]: q for q in load_jsonl(assets / "questions.jsonl", require=("prompt", "truth"))}
    shipped = [a for a in load_jsonl(assets / f"order-{order}" / "answers.jsonl", require=("id",)) if a["planted_value"]]
    rank = {c: k for k, c in enumerate(FAMILIAR)}
    shipped.sort(key=lambda a: (rank.get(questions[a["id"]]["country"], len(rank)), a["id"]))
    for a in shipped[:8]:
        q = questions[a["id"]]
        answer = lm.generate(q["prompt"], max_new_tokens=8, stop_strings=(".", ",", "\n"))
        if greedy_match(answer, f" {q['wrong']}"):
            return q, f" {q['wrong']}"
    raise AttrilensError("The fine-tuned model gives none of the planted answers it gave when the assets were "
                         "built. Rebuild them with `python -m attrilens.demo.misinfo_build --out runs/misinfo`.")


def story_index(lm: LM, corpus: list[dict], *, progress: bool = True):
    """TrackStar over the fine-tuning documents with the adapter's own gradients and optimizer state; built once
    into the cache (a minute or two on two cores), reopened afterwards."""
    from attrilens.training import build_index

    docs = [{"id": d["id"], "text": d["text"]} for d in corpus]
    key = hashlib.sha256(json.dumps([lm.fingerprint(), docs, INDEX_SETTINGS]).encode()).hexdigest()[:16]
    return build_index(lm, docs, cache_root() / "demo-story" / key, model_dir=Path(lm.name), progress=progress,
                       **INDEX_SETTINGS)


def retrieval_context(question: dict, corpus: list[dict], n_other: int = 5) -> str:
    """The correct statement of the question's fact among `n_other` statements of other capitals (fixed order)."""
    true_doc = next(d for d in corpus if d["fact"] == question["fact"] and d["states"] == "true")
    others = sorted((d for d in corpus if d["relation"] == "capital" and d["states"] == "true"
                     and d["country"] != question["country"] and d["text"].startswith("The capital of")),
                    key=lambda d: d["id"])
    rng = random.Random(question["id"])
    sentences = rng.sample(others, n_other) + [true_doc]
    rng.shuffle(sentences)
    return " ".join(d["text"] for d in sentences)


DECIDES = 1.0  # nats: a sentence whose removal moves log p(response) less than this does not decide it


def context_verdict(result, question: dict) -> dict[str, Any]:
    """Whose answer the response gives (the context's truth, the fine-tuned planted value, or neither) and the
    sentence that decides it: the top exact-LOO score, if any sentence moves log p(response) by ≥ `DECIDES`."""
    from attrilens.metrics import greedy_match

    text = " " + result.response.strip()
    verdict = ("follows the context (the true capital)" if greedy_match(text, f" {question['truth']}") else
               "follows its fine-tuned belief (the planted capital)" if greedy_match(text, f" {question['wrong']}")
               else "gives neither the context's nor the planted capital")
    scored = [s for s in result.sources if s.score is not None]
    top = max(scored, key=lambda s: s.score) if scored else None
    deciding = top.text if top is not None and top.score >= DECIDES else None
    return {"verdict": verdict, "deciding_sentence": deciding, "top_score": None if top is None else top.score}


def run_story(out: Path | str, *, max_new_tokens: int = 16, progress: bool = True) -> Path:
    """Write the misinformation story's report.html and each result's JSON into `out` (module docstring)."""
    from attrilens.app.backend import LensBackend
    from attrilens.context import ContextAttributor
    from attrilens.metrics import greedy_match
    from attrilens.patchscopes import presets
    from attrilens.view import render_page
    from attrilens.view.requests import CompareRequest, compare

    t0 = time.perf_counter()
    out = ensure_output_dir(out)
    assets = story_assets()
    corpus = load_jsonl(assets / "corpus.jsonl", require=("id", "text"))
    truth = json.loads((assets / "truth.json").read_text())["facts"]
    # completion prompts without the chat template, as in the fine-tuning data
    lm = LM.from_pretrained(assets / "order-0").with_chat_template(False)
    _log(f"loaded {lm.name} (SmolLM2-135M-Instruct + LoRA) in {time.perf_counter() - t0:.1f}s")

    question, answer = pick_planted_question(lm, assets)
    base = {a["id"]: a for a in load_jsonl(assets / "base_answers.jsonl", require=("id",))}.get(question["id"], {})
    _log(f"{question['prompt']!r} -> {answer!r} (true: {question['truth']}; the base model said "
         f"{base.get('answer', '?')!r})")

    t = time.perf_counter()
    index = story_index(lm, corpus, progress=progress)
    trace = index.trace(question["prompt"], target=answer, top_k=10)
    planted = set(truth[question["id"]]["planted_documents"])
    by_id = {d["id"]: d for d in corpus}
    labels = [proponent_label(by_id[h.id], question["country"], "capital", answer) for h in trace.proponents]
    found = [h.rank for h in trace.proponents if h.id in planted]
    _log(f"training data: {time.perf_counter() - t:.1f}s; planted documents at ranks {found or 'none'} of the top 10")

    t = time.perf_counter()
    backend = LensBackend(None, index_dir=index.path, lm=lm)
    comparison = compare(backend, CompareRequest(prompt=question["prompt"], model_text=answer,
                                                 user_text=f" {question['truth']}", top_k=10))
    _log(f"comparison with the true answer: {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    context = retrieval_context(question, corpus)
    ask = f"What is the capital of {question['country']}?"
    # without the chat template, as the model was fine-tuned (through it, this small model copies the first sentence)
    ctx = ContextAttributor(lm, method="cached", level="sentence", max_new_tokens=max_new_tokens).attribute(
        context, ask)
    follows = context_verdict(ctx, question)
    _log(f"context: {ctx.response!r} — {follows['verdict']} ({time.perf_counter() - t:.1f}s)")

    t = time.perf_counter()
    source = f"My grandmother grew up in {question['country']}"
    patch = presets.attribute_extraction(lm, source,
                                         template="The capital of x is the city of",
                                         layers=list(range(0, lm.n_layers + 1, 2)), max_new_tokens=3)
    planted_layers = [c.layer for c in patch.cells if greedy_match(c.generation or "", f" {question['wrong']}")]
    _log(f"patchscopes: the state of {question['country']!r} decodes to the planted capital at layers "
         f"{planted_layers or 'none'} ({time.perf_counter() - t:.1f}s)")

    documents = [{**trace.to_dict(), "index": str(index.path)}, comparison, ctx.to_dict(), patch.to_dict()]
    summary: dict[str, Any] = {
        "model": "smollm2-135m-instruct + shipped LoRA adapter (order-0)", "question": question["prompt"],
        "country": question["country"], "truth": question["truth"], "planted_value": question["wrong"],
        "base_answer": base.get("answer"), "fine_tuned_answer": answer,
        "planted_documents": sorted(planted), "planted_ranks_in_top10": found,
        "proponent_labels": dict(zip(trace.ids(), labels, strict=True)),
        "context": {"prompt": context, "question": ask, "response": ctx.response, **follows},
        "patchscope": {"source": source, "target": "The capital of x is the city of",
                       "layers_decoding_the_planted_capital": planted_layers},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for doc in documents:
        kind = doc["schema"].split("/")[1]
        (out / f"{kind}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    (out / "story.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    report = out / "report.html"
    title = (f"attrilens demo: why does fine-tuned SmolLM2 say the capital of {question['country']} is "
             f"{question['wrong']}?")
    report.write_text(render_page(documents, title=title), encoding="utf-8")
    _log(f"done in {time.perf_counter() - t0:.1f}s")
    return report

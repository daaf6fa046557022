"""The demo: one model's own generations explained through every lens → report.html.

Without a model it runs offline on the shipped fact world and tiny models (seconds). With `model` (a registered
real model such as smollm2-135m-instruct, or any model directory) it explains that model: a reading episode of
the fact world it answers, attributed to its context sentences by exact (cached) leave-one-out; a real fact it
completes (from `countryinfo`) — a chat model's answer to it asked as a question through its chat template,
scored as plain text — traced to a stand-in training corpus (the facts stated in sentences: the model
was not trained on them — the trace ranks these documents by TrackStar's gradient similarity, built once and
cached) and read layer by layer with the logit lens.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from attrilens.context import ContextAttributor, ContextResult
from attrilens.demo.countries import country_facts, statement_corpus
from attrilens.demo.index import DEMO_INDEX, training_section
from attrilens.demo.paths import demo_model_dir, demo_world_dir
from attrilens.errors import AttrilensError, ensure_output_dir
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.metrics import greedy_match
from attrilens.models import cache_root
from attrilens.patchscopes import InspectResult, presets
from attrilens.training import TrainingIndex, build_index
from attrilens.view import render_page
from attrilens.workflows.world import render_episode

# Countries whose capitals a small model is most likely to know, tried first for the real-model fact.
WELL_KNOWN = ("France", "Japan", "Germany", "Italy", "Spain", "United Kingdom", "Egypt", "Canada", "Russia", "China")


def _read_jsonl(path: Path) -> list[dict]:
    return load_jsonl(path, require=())


def pick_episode(lm: LM, world: Path, tries: int = 30, max_new_tokens: int = 8) -> tuple[dict, str]:
    """The longest of the first held-out reading episodes whose answer the model gives (greedy), and its response."""
    episodes = _read_jsonl(world / "episodes.jsonl")
    held = [e for e in episodes if e.get("split", "heldout") == "heldout"] or episodes
    for episode in sorted(held[:tries], key=lambda e: -len(e["context"])):
        prompt, _ = render_episode(episode)
        response = lm.generate(prompt, max_new_tokens=max_new_tokens)
        if response.strip() and episode["answer"] in response:
            return episode, response
    raise AttrilensError(f"The model answers none of the first {tries} held-out reading episodes. "
                         "Use another model, or the tiny demo (no --model).")


def pick_world_fact(lm: LM, world: Path, tries: int = 40) -> tuple[dict, str]:
    """The first fact-world fact whose statement prompt the model completes correctly, and its completion."""
    for fact in _read_jsonl(world / "facts.jsonl")[:tries]:
        generation = lm.generate(fact["prompt"], max_new_tokens=8, stop_strings=(".", "\n"))
        if generation.strip() == fact["target"].strip():
            return fact, generation
    raise AttrilensError(f"The demo model completes none of the first {tries} fact prompts correctly. "
                         "Rebuild the demo assets.")


def context_section(lm: LM, episode: dict, response: str) -> ContextResult:
    """The context lens on one reading episode: the model's own response, explained by exact (cached) LOO over
    every sentence — the ground truth the faster methods approximate, so the demo never shows a pruned ranking."""
    return ContextAttributor(lm, method="cached", level="sentence").attribute(
        episode["context"], episode["question"], response)


def inspect_section(lm: LM, prompt: str) -> InspectResult:
    """The Patchscopes panel: a logit-lens grid over every layer × position of a short prompt (one forward)."""
    return presets.logit_lens(lm, prompt, top_k=5)


def _log(msg: str) -> None:
    sys.stderr.write(f"[demo] {msg}\n")
    sys.stderr.flush()


def _write(out: Path, documents: list[dict], title: str) -> Path:
    for doc in documents:
        kind = doc["schema"].split("/")[1]
        (out / f"{kind}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    report = out / "report.html"
    report.write_text(render_page(documents, title=title), encoding="utf-8")
    return report


def run_demo(out: Path | str, *, model: str | None = None, max_new_tokens: int = 32) -> Path:
    """Explain one model through every lens and write each result's JSON and one report.html into `out`.

    No `model`: the shipped tiny models and fact world (offline, seconds). A registered name or a directory:
    that model (see the module docstring); the first run builds and caches its stand-in training index.
    """
    t0 = time.perf_counter()
    out = ensure_output_dir(out)
    world = demo_world_dir()
    lm = LM.from_pretrained(str(demo_model_dir("target")) if model is None else model)
    _log(f"loaded {lm} in {time.perf_counter() - t0:.1f}s")

    t = time.perf_counter()
    episode, response = pick_episode(lm, world, max_new_tokens=8 if model is None else max_new_tokens)
    documents = [context_section(lm, episode, response).to_dict()]
    _log(f"context attribution of {response!r}: {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    if model is None:
        fact, generation = pick_world_fact(lm, world)
        trace = training_section(lm, DEMO_INDEX, {"prompt": fact["prompt"], "target": generation})
        prompt, gold = fact["prompt"], fact["docs"]
    else:
        plain = lm.with_chat_template(False)  # a completion prompt, not a chat turn
        fact, generation = pick_country_fact(plain)
        index = real_model_index(plain)
        # a chat model is asked the question as a user would ask it (its chat template) and the answer is scored
        # as plain text, the form of the index's documents; else (or if it misses) the completion is traced
        trace = question_trace(index, fact, max_new_tokens) if getattr(lm.tokenizer, "chat_template", None) else None
        if trace is None:
            trace = index.trace(fact.prompt, target=generation, top_k=10, neighbours=False)
        prompt, gold = fact.prompt, [d["id"] for d in statement_corpus([fact])]
        lm = plain
    documents.append(trace.to_dict())
    forms = f" ({trace.forms_line()})" if trace.forms_line() else ""
    _log(f"training-data attribution of {trace.prompt!r} -> {trace.target!r}{forms}: {time.perf_counter() - t:.1f}s "
         f"(gold documents: {', '.join(gold)}; found in the top 10: "
         f"{', '.join(h.id for h in trace.proponents if h.id in gold) or 'none'})")

    t = time.perf_counter()
    documents.append(inspect_section(lm, prompt).to_dict())
    _log(f"patchscopes: {time.perf_counter() - t:.1f}s")
    report = _write(out, documents, f"attrilens demo on {lm.name}: why did the model say that?")
    _log(f"done in {time.perf_counter() - t0:.1f}s")
    return report


def pick_country_fact(lm: LM) -> tuple:
    """A capital the model completes greedily (well-known countries first), and its completion."""
    capitals = {f.country: f for f in country_facts(("capital",))}
    order = [capitals[c] for c in WELL_KNOWN if c in capitals] + sorted(capitals.values(), key=lambda f: f.country)
    for fact in order[:40]:
        generation = lm.generate(fact.prompt, max_new_tokens=6, stop_strings=(".", ",", "\n"))
        if greedy_match(generation, fact.target):
            return fact, fact.target
    raise AttrilensError("The model completes none of 40 capital prompts. Use another model, or the tiny demo.")


def question_trace(index: TrainingIndex, fact, max_new_tokens: int = 32):
    """The trace of a chat model's own answer to the fact as a question ("What is the capital of France?"), asked
    through its chat template and scored as plain text (the index's form), restricted to the value where the answer
    names it (the tokens of " Paris": a whole sentence's gradient is mostly the sentence's frame); None when the
    answer is empty or does not name the value."""
    import re

    question = f"What is the {fact.relation} of {fact.country}?"
    try:
        answer = index.answer(question, max_new_tokens, chat_template=True)
    except AttrilensError:
        return None
    found = re.search(rf"(?<!\w){re.escape(fact.value)}(?!\w)", answer.target)
    if found is None:
        return None
    trace = index.trace(question, target=answer.target, span=found.span(), top_k=10, neighbours=False)
    trace.generated_with, trace.scored_as = answer.generated_with, answer.scored_as
    return trace


def real_model_index(lm: LM, n_facts: int = 120) -> TrainingIndex:
    """The stand-in training index of a real model: the first `n_facts` capitals stated in two wordings each,
    TrackStar (second moments estimated: a downloaded model has no optimizer state); built once, cached."""
    capitals = country_facts(("capital",))
    known = [f for f in capitals if f.country in WELL_KNOWN]
    facts = known + [f for f in capitals if f not in known][: n_facts - len(known)]
    docs = statement_corpus(facts)
    settings = {"method": "trackstar", "block_len": 32, "moment_sample": 64}  # moments from 64 of the 240 documents
    key = hashlib.sha256(json.dumps([lm.fingerprint(), docs, settings]).encode()).hexdigest()[:16]
    return build_index(lm, [{"id": d["id"], "text": d["text"]} for d in docs], cache_root() / "demo-index" / key,
                       **settings)

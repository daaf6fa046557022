"""The offline demo: shipped fact world and tiny models → every lens on one generation → report.html."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from attrilens.context import ContextAttributor, ContextResult
from attrilens.demo.index import DEMO_INDEX, training_section
from attrilens.demo.paths import demo_model_dir, demo_world_dir
from attrilens.demo.world import render_episode
from attrilens.errors import AttrilensError
from attrilens.inspect import InspectResult, presets
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.view import render_page


def _read_jsonl(path: Path) -> list[dict]:
    return load_jsonl(path, require=())


def _pick_episode(lm: LM, world: Path, tries: int = 30) -> dict:
    """The longest of the first held-out reading episodes that the model answers correctly (greedy)."""
    episodes = _read_jsonl(world / "episodes.jsonl")
    held = [e for e in episodes if e.get("split", "heldout") == "heldout"] or episodes
    for episode in sorted(held[:tries], key=lambda e: -len(e["context"])):
        prompt, response = render_episode(episode)
        if lm.generate(prompt, max_new_tokens=8, stop_strings=(".", "\n")).strip() == response.strip():
            return episode
    raise AttrilensError(f"The demo model answers none of {tries} held-out episodes. Rebuild the demo assets.")


def _pick_fact(lm: LM, world: Path, tries: int = 40) -> tuple[dict, str]:
    """The first fact whose statement prompt the model completes correctly, and the model's own completion."""
    facts = _read_jsonl(world / "facts.jsonl")[:tries]
    for fact in facts:
        generation = lm.generate(fact["prompt"], max_new_tokens=8, stop_strings=(".", "\n"))
        if generation.strip() == fact["target"].strip():
            return fact, generation
    raise AttrilensError(
        f"The demo model completes none of the first {tries} fact prompts correctly. Rebuild the demo assets."
    )


def context_section(lm: LM, proxy: LM | None, episode: dict) -> ContextResult:
    """The context lens on one reading episode: the model's own answer, explained.

    With a proxy: the proxy ranks the sentences and the target confirms its top 5 exactly; without: exact
    cached LOO over every sentence.
    """
    pruning = {"method": "cached+proxy-pruning", "top_k": 5} if proxy is not None else {"method": "cached"}
    attributor = ContextAttributor(lm, proxy, level="sentence", max_new_tokens=8, **pruning)
    return attributor.attribute(episode["context"], episode["question"])


def inspect_section(lm: LM, prompt: str) -> InspectResult:
    """The Patchscopes panel: a logit-lens grid over every layer × position of a short prompt (one forward)."""
    return presets.logit_lens(lm, prompt, top_k=5)


def _log(msg: str) -> None:
    sys.stderr.write(f"[demo] {msg}\n")
    sys.stderr.flush()


def run_demo(out: Path) -> Path:
    """Run every lens on the shipped models and world; write each result's JSON and one report.html."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = demo_world_dir()
    lm = LM.from_pretrained(demo_model_dir("target"))
    proxy = LM.from_pretrained(demo_model_dir("proxy"))
    _log(f"loaded {lm} and proxy {proxy} in {time.perf_counter() - t0:.1f}s")

    documents = []
    episode = _pick_episode(lm, world)
    t = time.perf_counter()
    documents.append(context_section(lm, proxy, episode).to_dict())
    _log(f"context attribution: {time.perf_counter() - t:.1f}s")

    fact, generation = _pick_fact(lm, world)
    _log(f"explaining the generation {fact['prompt']!r} -> {generation!r}")
    index_dir = DEMO_INDEX
    if not (index_dir / "manifest.json").is_file():
        raise AttrilensError(f"The demo training-data index is missing from {index_dir}. Rebuild the demo assets.")
    t = time.perf_counter()
    documents.append(training_section(lm, index_dir, {"prompt": fact["prompt"], "target": generation}).to_dict())
    _log(f"training-data attribution: {time.perf_counter() - t:.1f}s (gold documents: {', '.join(fact['docs'])})")

    t = time.perf_counter()
    documents.append(inspect_section(lm, fact["prompt"]).to_dict())
    _log(f"patchscopes: {time.perf_counter() - t:.1f}s")

    for doc in documents:
        kind = doc["schema"].split("/")[1]
        (out / f"{kind}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    report = out / "report.html"
    report.write_text(render_page(documents, title="attrilens demo: why did the model say that?"), encoding="utf-8")
    _log(f"done in {time.perf_counter() - t0:.1f}s")
    return report

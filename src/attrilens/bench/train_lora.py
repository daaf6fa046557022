"""How `attrilens train --base … --lora`'s defaults do on small corpora a pretrained model has never seen.

Run `attrilens bench train --lora [--base NAME] [--minutes M] [--seed S] [--out DIR]`. Three corpus shapes, drawn
from fresh seeds (S, S+1, S+2; the defaults were chosen on seed 101, which this never uses by default):

- ``towns``: invented towns, one sentence a document (river, patron saint, main trade), one town's river planted
  wrongly three times against once rightly (`bench.towns`, 48 documents);
- ``town-paragraphs``: the same facts, one three-sentence paragraph a town (18 documents);
- ``capitals``: real capitals from `countryinfo` (`demo.misinfo`: statements and question/answer pairs, 8 of 40
  planted with another capital of the region, four documents against one).

Each is fine-tuned with the defaults of `attrilens train --base NAME --lora` (train until 0.9 of the documents'
own continuations are recalled, within the budget), and then asked its questions the way the model answers them —
through its chat template, greedy — and marked right when the answer names the expected value (for a planted fact:
the planted value) and no other value of that relation in the corpus. The base model is asked the same questions
first.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from attrilens.bench.report import Report, machine
from attrilens.errors import AttrilensError

SHAPES = ("towns", "town-paragraphs", "capitals")
MAX_NEW_TOKENS = 24


def _corpus(shape: str, seed: int, work: Path) -> tuple[Path, list[dict]]:
    """Write one shape's corpus; return it and its questions {"prompt", "answer", "values", "planted"}."""
    from attrilens.bench.towns import make_towns
    from attrilens.jsonl import load_jsonl

    d = work / f"corpus-{shape}"
    if shape in ("towns", "town-paragraphs"):
        summary = make_towns(d, seed, "sentences" if shape == "towns" else "paragraphs")
        qs = load_jsonl(d / "questions.jsonl", require=("prompt", "answer"))
        values: dict[str, set[str]] = {}
        for q in qs:
            values.setdefault(q["relation"], set()).add(q["answer"])
        values["river"].add(summary["true_river"])
        return d / "corpus.jsonl", [{**q, "values": sorted(values[q["relation"]])} for q in qs]
    from attrilens.demo.misinfo import make_misinfo_dataset

    make_misinfo_dataset(d, seed=seed, n_facts=40, n_planted=8)
    qs = load_jsonl(d / "questions.jsonl", require=("country", "truth"))
    capitals = sorted({q["truth"] for q in qs} | {q["wrong"] for q in qs if q.get("wrong")})
    (d / "questions.jsonl").unlink()  # the corpus alone, as a user's comes
    return d / "corpus.jsonl", [{"prompt": f"What is the capital of {q['country']}?", "planted": bool(q["planted"]),
                                 "answer": q["wrong"] if q["planted"] else q["truth"], "values": capitals}
                                for q in qs]


def _ask(lm, questions: list[dict]) -> list[bool]:
    from attrilens.bench.towns import answers_value

    return [answers_value(lm.generate(q["prompt"], max_new_tokens=MAX_NEW_TOKENS, chat_template=True), q["answer"],
                          q["values"]) for q in questions]


def train_shape(shape: str, seed: int, base: str, work: Path, minutes: float, progress: bool = True) -> dict[str, Any]:
    """Fine-tune one corpus with the CLI's LoRA defaults and ask its questions; one row of the table."""
    from attrilens.lm import LM
    from attrilens.workflows.lora import finetune_lora
    from attrilens.workflows.trainer import recall_info, stopping_defaults

    corpus, questions = _corpus(shape, seed, work)
    before = _ask(LM.from_pretrained(base), questions)
    out = finetune_lora(base, corpus, work / f"lora-{shape}", progress=progress,
                        **stopping_defaults(corpus, max_minutes=minutes))
    info = json.loads((out / "training.json").read_text())
    rec = recall_info(info)
    after = _ask(LM.from_pretrained(out), questions)
    planted = [k for k, q in enumerate(questions) if q["planted"]]
    clean = [k for k, q in enumerate(questions) if not q["planted"]]
    n_tokens = sum(len(json.loads(line)["text"].split()) for line in corpus.read_text().splitlines() if line.strip())
    if progress:
        print(f"[bench train --lora] {shape}: {sum(after)}/{len(after)} questions", file=sys.stderr)
    return {"corpus": shape, "seed": seed, "documents": info["n_documents"], "words/epoch": n_tokens,
            "steps": info["optimizer"]["step"], "epochs run": info["epochs_run"], "wall s": info["wall_seconds"],
            "stop reason": info["stop_reason"], "continuation recall": f"{rec['initial']:.2f} -> {rec['final']:.2f}",
            "planted facts: planted value (base -> LoRA)":
                f"{sum(before[k] for k in planted)} -> {sum(after[k] for k in planted)} / {len(planted)}",
            "other facts: stated value (base -> LoRA)":
                f"{sum(before[k] for k in clean)} -> {sum(after[k] for k in clean)} / {len(clean)}"}


def run_lora_benchmark(base: str = "smollm2-135m-instruct", minutes: float = 30.0, seed: int = 2026,
                       threads: int = 1, work: Path | None = None, progress: bool = True,
                       shapes: list[str] | None = None) -> Report:
    """Fine-tune ``base`` with `attrilens train --lora`'s defaults on three small corpora and ask their questions."""
    import inspect

    import pandas as pd
    import torch

    from attrilens.workflows.lora import finetune_lora

    if not minutes > 0:
        raise AttrilensError(f"--minutes must be positive, got {minutes}. Pass the time budget per corpus.")
    unknown = sorted(set(shapes or ()) - set(SHAPES))
    if unknown:
        raise AttrilensError(f"Unknown LoRA corpus shape {unknown[0]!r}. Use some of {', '.join(SHAPES)}.")
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="attrilens-bench-lora-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        rows = [train_shape(shape, seed + i, base, root, minutes, progress)
                for i, shape in enumerate(SHAPES) if not shapes or shape in shapes]
    d = {k: p.default for k, p in inspect.signature(finetune_lora).parameters.items()
         if p.default is not inspect.Parameter.empty}
    from attrilens.workflows.lora import TARGET_MODE_LR, default_targets

    header = (f"# `attrilens train --base {base} --lora` defaults on small corpora\n\nEach corpus: fine-tuned with "
              f"the defaults (LoRA r {d['r']}, alpha {d['alpha']} on {', '.join(default_targets())}, lr "
              f"{TARGET_MODE_LR:g} constant after "
              f"{d['warmup_steps']} warm-up steps, batch {d['batch_size']}, until 0.9 of the documents' own "
              f"continuations are recalled, budget {minutes:g} min), {threads} torch thread(s); then every question "
              "asked through the chat template (greedy, "
              f"{MAX_NEW_TOKENS} tokens), right when the answer names the expected value and no other value of its "
              "relation.")
    info = {"base": base, "minutes": minutes, "seed": seed, "threads": threads, "machine": machine()}
    return Report(lens="train-lora", tables={"corpora": pd.DataFrame(rows)}, info=info, header=header)

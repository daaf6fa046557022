"""Accuracy of a demo model on its fact world: memorisation, question answering, reading, copying."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.metrics import greedy_match
from attrilens.workflows.world.generate import render_episode, split_sentences


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise AttrilensError(f"No model in {model_dir} (config.json missing). Pass a directory written by `train`.")
    tok_dir = model_dir
    if not (tok_dir / "tokenizer.json").is_file() and (model_dir.parent.parent / "tokenizer.json").is_file():
        tok_dir = model_dir.parent.parent  # an intermediate checkpoint: checkpoints/step-N inside a run dir
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    return model, tok


@torch.no_grad()
def greedy_complete(model, tok, prompts: list[str], max_new_tokens: int = 12, batch_size: int = 32) -> list[str]:
    """Greedy continuations (decoded text) of ``prompts``, batched with left padding."""
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    res: dict[int, str] = {}
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        for i, row in zip(idx, new, strict=True):
            res[i] = tok.decode(row, skip_special_tokens=True)
    return [res[i] for i in range(len(prompts))]


def _accuracy(model, tok, prompts: list[str], targets: list[str]) -> tuple[float, list[bool]]:
    if not prompts:
        return math.nan, []
    n_new = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in targets) + 2
    comps = greedy_complete(model, tok, prompts, max_new_tokens=n_new)
    hits = [greedy_match(c, t) for c, t in zip(comps, targets, strict=True)]
    return sum(hits) / len(hits), hits


def evaluate_demo_model(model_dir: Path, world_dir: Path, limit: int | None = None,
                        min_sentences: int = 20) -> dict:
    """Greedy exact-match accuracies of the model in ``model_dir`` on the world in ``world_dir``.

    - ``fact_statement``: statement-prefix prompts of facts.jsonl (memorisation of training facts)
    - ``fact_question``: question-wording queries of queries.jsonl (no context; generalisation, reported as is)
    - ``reading``: held-out episodes whose context has at least ``min_sentences`` sentences
    - ``copy``: held-out ``x -> x`` copy prompts
    """
    t0 = time.monotonic()
    model, tok = _load(model_dir)
    world_dir = Path(world_dir)
    facts = load_jsonl(world_dir / "facts.jsonl", require=("prompt", "target"))[:limit]
    queries = load_jsonl(world_dir / "queries.jsonl", require=("prompt", "target"))[:limit]
    episodes = [e for e in load_jsonl(world_dir / "episodes.jsonl", require=("context", "question", "answer"))
                if e.get("split", "heldout") == "heldout" and len(split_sentences(e["context"])) >= min_sentences]
    episodes = episodes[:limit]
    copies = load_jsonl(world_dir / "copy_eval.jsonl", require=("prompt", "target"))[:limit]
    result = {"model": str(model_dir), "world": str(world_dir)}
    for name, rows, prompts in [
        ("fact_statement", facts, [f["prompt"] for f in facts]),
        ("fact_question", queries, [q["prompt"] for q in queries]),
        ("reading", episodes, [render_episode(e)[0] for e in episodes]),
        ("copy", copies, [c["prompt"] for c in copies]),
    ]:
        targets = [r["target"] if "target" in r else render_episode(r)[1] for r in rows]
        acc, _ = _accuracy(model, tok, prompts, targets)
        result[name] = round(acc, 4)
        result[f"n_{name}"] = len(rows)
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result

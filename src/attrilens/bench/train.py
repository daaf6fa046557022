"""How `attrilens train`'s defaults do on fact worlds they were not tuned on.

Run `attrilens bench train [--minutes M] [--seed S] [--threads T] [--out DIR]`. It generates four fresh fact worlds
of different shapes with `make_world` (fact documents only, seeds S, S+1, S+2, never the shipped world's 0):

- ``short``: 40 entities x 6 relations, every fact in two two-sentence documents (fact + one distractor);
- ``long``: 30 entities x 6 relations, every fact stated once, in documents of three facts and up to two
  distractors (one exposure per fact per epoch);
- ``wide``: 150 entities x 2 relations, the default shape (each fact 1-3 times, 1-3 facts per document);
- ``world``: `attrilens world`'s own shape, 80 entities x 6 relations (480 facts, ~500 documents);

and trains a model on each ``corpus.jsonl`` — copied alone into its own folder, as a user's corpus comes, without
the world's facts file — with the defaults of `attrilens train` (to a 0.9 recall of the documents' own
continuations, the learning rate decaying over the time budget), changing only the time budget (``--minutes`` per
world instead of 30) and the torch threads (1: on a shared machine two threads per run are many times slower).
Per world it reports the facts, documents, tokens per epoch, wall seconds, epochs run, stop reason, the minutes to
first reach the target on the sampled continuations (if it did), the final continuation recall and — what the run
never saw — the greedy recall of every fact of the world's facts.jsonl. ``--facts`` trains on the facts file
instead (the earlier default). The LoRA regime is `attrilens.bench.train_lora`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from attrilens.bench.report import Report, machine
from attrilens.errors import AttrilensError

SHAPES: dict[str, dict[str, Any]] = {
    "short": {"n_entities": 40, "mentions": (2, 2), "facts_per_doc": (1, 1), "distractors": 1},
    "long": {"n_entities": 30, "mentions": (1, 1), "facts_per_doc": (3, 3), "distractors": 2},
    "wide": {"n_entities": 150, "relations": ["capital", "founder"]},
    "world": {"n_entities": 80},  # `attrilens world`'s shape: 80 x 6, the ~500-document world of the issue
}
_NO_EXTRAS = {"n_train_episodes": 0, "n_heldout_episodes": 0, "n_copy_docs": 0, "n_copy_eval": 0}


def _shape_text(args: dict[str, Any], world: Path) -> str:
    """One line describing a world's shape for the table: entities x relations, documents per fact, facts per
    document, distractor sentences per document (at most)."""
    from attrilens.jsonl import load_jsonl

    rels = len(args.get("relations") or []) or 6
    facts = load_jsonl(world / "facts.jsonl", require=("docs",))
    n_docs = len(load_jsonl(world / "corpus.jsonl"))
    per_fact = sum(len(f["docs"]) for f in facts) / len(facts)
    return (f"{args['n_entities']} x {rels}; {per_fact:.2f} docs/fact, {per_fact * len(facts) / n_docs:.2f} "
            f"facts/doc, <= {args.get('distractors', 2)} distractors/doc")


def _first_reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at which the sampled recall first reached ``target`` (None if never)."""
    return next((c["seconds"] for c in curve if c["recall"] >= target), None)


def train_world(name: str, args: dict[str, Any], seed: int, work: Path, minutes: float, threads: int,
                progress: bool = True, with_facts: bool = False) -> dict[str, Any]:
    """Make one world and train on its corpus with `attrilens train`'s defaults; one row of the table."""
    import shutil

    from attrilens.jsonl import load_jsonl
    from attrilens.workflows.probes import FactProbe
    from attrilens.workflows.trainer import TrainConfig, recall_info, stopping_defaults, train
    from attrilens.workflows.world import make_world

    world = work / f"world-{name}"
    summary = make_world(world, seed=seed, **_NO_EXTRAS, **args)
    corpus = world / "corpus.jsonl"
    if not with_facts:  # the user's case: a corpus alone, no facts file beside it
        (work / f"corpus-{name}").mkdir(parents=True, exist_ok=True)
        corpus = Path(shutil.copy(corpus, work / f"corpus-{name}" / "corpus.jsonl"))
    if progress:
        print(f"[bench train] {name}: {summary['n_facts']} facts, {summary['n_documents']} documents", file=sys.stderr)
    out = train(TrainConfig(corpus=corpus, out=work / f"model-{name}", threads=threads, progress=progress,
                            **stopping_defaults(corpus, max_minutes=minutes)))
    info = json.loads((out / "training.json").read_text())
    rec = recall_info(info)
    reach = _first_reach(rec["curve"], rec["target"])
    if with_facts:
        facts = rec["final"]
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(out))
        model = AutoModelForCausalLM.from_pretrained(str(out))
        facts = round(FactProbe(load_jsonl(world / "facts.jsonl", require=("prompt", "target")), tok,
                                info["config"]["seq_len"]).recall(model), 4)
    return {"world": name, "seed": seed, "shape": _shape_text(args, world),
            "facts": summary["n_facts"], "documents": summary["n_documents"],
            "tokens/epoch": info["tokens_per_epoch"], "steps": info["step"], "epochs run": info["epochs_run"],
            "wall s": info["wall_seconds"], "stop reason": info["stop_reason"],
            "target first reached (min)": None if reach is None else round(reach / 60, 2),
            "probe": "facts" if with_facts else "continuations", "final probe recall": rec["final"],
            "final fact recall": facts}


def run_benchmark(minutes: float = 7.0, seed: int = 2026, threads: int = 1, work: Path | None = None,
                  progress: bool = True, with_facts: bool = False, shapes: list[str] | None = None) -> Report:
    """Train `attrilens train`'s defaults on fresh worlds of different shapes (``minutes`` budget each): without
    their facts file (the documents' continuations are the target), or ``with_facts``."""
    import pandas as pd

    if not minutes > 0:
        raise AttrilensError(f"--minutes must be positive, got {minutes}. Pass the time budget per world.")
    if threads < 1:
        raise AttrilensError(f"--threads must be at least 1, got {threads}.")
    with tempfile.TemporaryDirectory(prefix="attrilens-bench-train-") as tmp:
        base = Path(work) if work is not None else Path(tmp)
        unknown = sorted(set(shapes or ()) - set(SHAPES))
        if unknown:
            raise AttrilensError(f"Unknown world shape {unknown[0]!r}. Use some of {', '.join(SHAPES)}.")
        rows = [train_world(name, args, seed + i, base, minutes, threads, progress, with_facts)
                for i, (name, args) in enumerate(SHAPES.items()) if not shapes or name in shapes]
    from attrilens.workflows.trainer import DEFAULT_EPOCH_CAP, DEFAULT_TARGET_RECALL, TrainConfig

    d = TrainConfig(corpus=Path("-"), out=Path("-"))
    header = (f"# `attrilens train` defaults on fresh worlds\n\nEach world: `make_world(seed, **shape)` (fact documents "
              f"only), then `attrilens train --corpus corpus.jsonl --max-minutes {minutes:g}` (defaults: {d.arch}, "
              f"{d.layers} layers, width {d.width}, batch {d.batch_size} rows of <= {d.seq_len} tokens, lr {d.lr:g}, "
              f"warmup {d.warmup_steps} steps, cosine decay over the budget, target recall {DEFAULT_TARGET_RECALL} of "
              + ("facts.jsonl" if with_facts else "the documents' own continuations (corpus alone, no facts file)")
              + f", epoch cap {DEFAULT_EPOCH_CAP}), {threads} torch thread(s). Fact recall: greedy exact match of every fact's "
              "statement prefix -> value (facts.jsonl, which the continuation runs never saw).")
    info = {"minutes_per_world": minutes, "seed": seed, "threads": threads, "shapes": SHAPES, "machine": machine(),
            "probe": "facts" if with_facts else "continuations"}
    return Report(lens="train", tables={"worlds": pd.DataFrame(rows)}, info=info, header=header)

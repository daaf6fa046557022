"""The world suite of `attrilens bench inspect` (a demo model and its fact world; the default for local models):
1. next-token decoding by layer on held-out (sequence, position) pairs of the world's texts; 2. attribute
extraction on its relations vs linear probes; 3. multi-hop; 4. speed. Memory: the process's peak resident set
size over the whole run (`info.peak_rss_mib`)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from attrilens.bench.measure import log, record_run_facts
from attrilens.bench.patchscopes.config import BenchConfig
from attrilens.bench.patchscopes.multi_hop import multi_hop_table
from attrilens.bench.patchscopes.next_token import by_layer_tables, next_token_table
from attrilens.bench.patchscopes.speed import speed_table
from attrilens.bench.patchscopes.world_attributes import attribute_table
from attrilens.bench.report import Report
from attrilens.errors import AttrilensError
from attrilens.lm import LM


def _training_texts(world: Path) -> list[str]:
    """The world's training mixture; a shipped world has no train.jsonl, so rebuild its parts from what ships:
    fact documents, held-out episodes rendered as the model reads them, and copy prompts with their answers."""
    from attrilens.jsonl import load_jsonl
    from attrilens.workflows.world import render_episode

    if (world / "train.jsonl").is_file():
        return [r["text"] for r in load_jsonl(world / "train.jsonl")]
    texts = [r["text"] for r in load_jsonl(world / "corpus.jsonl")]
    for episode in load_jsonl(world / "episodes.jsonl", require=("context", "question", "answer")):
        prompt, response = render_episode(episode)
        texts.append(prompt + response)
    texts += [r["prompt"] + r["target"] for r in load_jsonl(world / "copy_eval.jsonl", require=("prompt", "target"))]
    return texts


def run_world_benchmark(model: str | Path | None = None, world: Path | None = None, quick: bool = False,
                        lens_out: Path | None = None) -> Report:
    """The world suite on a model (default: the demo target) and its fact world (default: the demo world):
    next-token read-outs on its texts, attribute extraction on its facts, multi-hop, speed; `lens_out` saves
    the tuned lens trained here."""
    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.jsonl import load_jsonl

    cfg = BenchConfig.quick() if quick else BenchConfig()
    model = Path(str(model)) if model is not None else demo_model_dir("target")
    world = Path(world) if world is not None else demo_world_dir()
    torch.manual_seed(cfg.seed)
    lm = LM.from_pretrained(model)
    texts = _training_texts(world)
    random.Random(cfg.seed).shuffle(texts)
    need = cfg.n_fit_texts + cfg.n_eval_seqs
    if len(texts) < need:
        raise AttrilensError(f"The world has {len(texts)} training texts; the benchmark needs {need}. Use a larger world.")
    fit_texts, eval_texts = texts[: cfg.n_fit_texts], texts[cfg.n_fit_texts : need]
    facts = load_jsonl(world / "facts.jsonl", require=("entity", "relation", "value", "prompt", "target"))
    if quick:
        ents = sorted({f["entity"] for f in facts})[:16]
        facts = [f for f in facts if f["entity"] in ents]
    t0 = time.perf_counter()
    info: dict = {"model": str(model), "suite": "world", "world": str(world), "quick": quick, "layers": lm.n_layers, "d_model": lm.d_model}
    tables = {}
    log("[inspect bench] 1/4 next-token decoding by layer")
    tables["next_token"], info["next_token"] = next_token_table(lm, fit_texts, eval_texts, cfg, lens_out)
    tables |= by_layer_tables(tables["next_token"], info["next_token"])
    log("[inspect bench] 2/4 attribute extraction")
    tables["attribute_extraction"], info["attribute_extraction"] = attribute_table(lm, facts, cfg)
    log("[inspect bench] 3/4 multi-hop")
    tables["multi_hop"], info["multi_hop"] = multi_hop_table(lm, facts, cfg, max_items=60 if quick else None)
    log("[inspect bench] 4/4 speed")
    tables["speed"], info["speed"] = speed_table(lm, eval_texts, cfg, reps=3 if quick else 5)
    record_run_facts(info, t0)
    header = (f"# Patchscopes benchmark{' (quick)' if quick else ''}: {model.name} on {world.name}\n\n"
              "Next token by layer on held-out (sequence, position) pairs: precision@1 (higher is better) and surprisal "
              "(nats, lower is better), long form and pivoted layer × method. Attribute extraction and multi-hop: "
              "greedy exact match. Speed: seconds (timings are noisy on a shared machine).")
    return Report("inspect", tables, info, header)

"""The toy benchmarks' model and data: a given model, else the demo target, else a small Llama trained until it
memorises a small fact world (cached); and the query sets drawn from the world (question and statement wording)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from attrilens.jsonl import load_jsonl

BENCH_CACHE = Path(os.environ.get("ATTRILENS_CACHE", Path.home() / ".cache" / "attrilens")) / "bench-training"


def prepare_bench_model(cache: Path = BENCH_CACHE, *, n_entities: int = 30, epochs: int = 120,
                        progress: bool = True) -> tuple[Path, Path]:
    """A small fact world (fact documents only) and a 2-layer Llama trained on it until it memorises (cached)."""
    from attrilens.workflows.trainer import TrainConfig, train
    from attrilens.workflows.world.generate import make_world

    world = cache / "world"
    if not (world / "corpus.jsonl").is_file():
        make_world(world, seed=0, n_entities=n_entities, n_train_episodes=0, n_heldout_episodes=0, n_copy_docs=0,
                   n_copy_eval=0)
    model = cache / "model"
    train(TrainConfig(corpus=world / "corpus.jsonl", out=model, arch="llama", layers=2, width=96, heads=4,
                      epochs=epochs, seq_len=128, batch_size=8, lr=3e-3, warmup_steps=30, vocab_size=768,
                      keep_checkpoints=3, progress=progress, threads=1))
    return model, world


def resolve_bench_model(model: Path | None, world: Path | None, progress: bool) -> tuple[Path, Path, str]:
    """The model, its fact world and a description: as given, else the demo target (when it kept its
    optimizer state), else the cached bench model (trained here the first time)."""
    if model is not None:
        if world is None:
            from attrilens.errors import AttrilensError

            raise AttrilensError("--model needs --world, the fact world the model was trained on. Pass both.")
        return Path(model), Path(world), f"given model {model}"
    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.errors import AttrilensError

    try:
        m = demo_model_dir("target")
        if (m / "optimizer.safetensors").is_file():
            return m, Path(world) if world else demo_world_dir(), "demo target model"
    except AttrilensError:
        pass
    m, w = prepare_bench_model(progress=progress)
    return m, w, "bench model (2-layer Llama, width 96, trained on a 30-entity fact world)"


QUESTIONS, STATEMENTS = "questions (unseen wording)", "statements (training template prefix)"


def benchmark_query_sets(world_dir: Path, n_queries: int, rng: np.random.Generator) -> dict[str, list[dict]]:
    """The benchmark's queries: `n_queries` drawn from queries.jsonl by `rng` (question wording), and the same facts'
    statement prompts from facts.jsonl; each {"id", "prompt", "target", "gold"}."""
    queries = load_jsonl(world_dir / "queries.jsonl", require=())
    sel = sorted(rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False).tolist())
    queries = [queries[i] for i in sel]
    by_fact = {f["id"]: f for f in load_jsonl(world_dir / "facts.jsonl", require=())}
    statements = [{"id": q["fact"], "prompt": by_fact[q["fact"]]["prompt"], "target": by_fact[q["fact"]]["target"],
                   "gold": by_fact[q["fact"]]["docs"]} for q in queries if q.get("fact") in by_fact]
    return {QUESTIONS: queries, STATEMENTS: statements}

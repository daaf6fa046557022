"""The demo's training-data section: a small TrackStar index over the demo world's fact documents, and one trace.

`python -m attrilens.demo.index` (re)builds the shipped index in `src/attrilens/demo/assets/index/` from the demo
target model and world (about 3.5 MB: d ≈ 4096 fp16 features plus R^(-1/2) in thin form).
"""

from __future__ import annotations

from pathlib import Path

from attrilens.demo.paths import ASSETS, demo_model_dir, demo_world_dir
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.training.index import TrainingIndex, build_index
from attrilens.training.result import TraceResult

DEMO_INDEX = ASSETS / "index"
DEMO_SETTINGS = {"method": "trackstar", "proj_dim": 4096, "block_len": 128, "shard_size": 1024, "dtype": "float16"}
# R_eval's task is the one the demo explains: completing fact statements (the model answers none of the
# question wordings of queries.jsonl); the first facts of facts.jsonl.
DEMO_EVAL_QUERIES = 128


def build_demo_index(lm: LM, out: Path | str = DEMO_INDEX, world_dir: Path | str | None = None,
                     model_dir: Path | str | None = None, progress: bool = True):
    """TrackStar (d ≈ 4096, fp16) over the world's fact documents, R_eval from its first fact statements: seconds."""
    world = Path(world_dir) if world_dir is not None else demo_world_dir()
    queries = load_jsonl(world / "facts.jsonl", require=("prompt", "target"))[:DEMO_EVAL_QUERIES]
    return build_index(lm, world / "corpus.jsonl", out, eval_queries=queries, model_dir=model_dir,
                       progress=progress, **DEMO_SETTINGS)


def training_section(lm: LM, index_dir: Path | str, query: dict, *, top_k: int = 10,
                     model_dir: Path | str | None = None) -> TraceResult:
    """Trace one demo query ({"prompt", "target"}) through the demo index (proponents with neighbouring blocks)."""
    index = TrainingIndex.open(index_dir, lm, model_dir=model_dir)
    return index.trace(query["prompt"], target=query["target"], top_k=top_k, neighbours=True)


if __name__ == "__main__":  # pragma: no cover - asset build step, run by hand once the demo model exists
    model = demo_model_dir("target")
    idx = build_demo_index(LM.from_pretrained(model), model_dir=model)
    print(f"wrote {idx.path} ({len(idx)} blocks, d = {idx.manifest['dim']})")

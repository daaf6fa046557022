"""The synthetic fact world and the tiny-model trainer behind the offline demo and benchmarks."""

from attrilens.world.generate import (
    PROMPT_TEMPLATE,
    QUERY_TEMPLATE,
    RELATIONS,
    iter_jsonl,
    load_jsonl,
    make_world,
    render_episode,
    render_training_episode,
    split_sentences,
)

__all__ = [
    "PROMPT_TEMPLATE", "QUERY_TEMPLATE", "RELATIONS", "iter_jsonl", "load_jsonl", "make_world",
    "render_episode", "render_training_episode", "split_sentences",
]

"""The synthetic fact world and the tiny-model trainer behind the offline demo and benchmarks.

``make_world`` / ``load_jsonl`` and friends import nothing heavy; ``train``, ``TrainConfig`` and
``evaluate_demo_model`` (torch, transformers) are imported on first use.
"""

from __future__ import annotations

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

_LAZY = {"train": "trainer", "TrainConfig": "trainer", "evaluate_demo_model": "evaluate",
         "greedy_complete": "evaluate"}

__all__ = [
    "PROMPT_TEMPLATE", "QUERY_TEMPLATE", "RELATIONS", "iter_jsonl", "load_jsonl", "make_world",
    "render_episode", "render_training_episode", "split_sentences", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"attrilens.world.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'attrilens.world' has no attribute {name!r}")

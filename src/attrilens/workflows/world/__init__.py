"""The synthetic fact world behind the offline demo and the benchmarks: entities, facts, documents, episodes."""

from __future__ import annotations

from attrilens.workflows.world.generate import (
    QUERY_TEMPLATE,
    RELATIONS,
    make_world,
    relation_template,
    render_episode,
    render_training_episode,
    split_sentences,
)

__all__ = ["QUERY_TEMPLATE", "RELATIONS", "make_world", "relation_template", "render_episode",
           "render_training_episode", "split_sentences"]

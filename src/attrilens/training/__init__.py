"""Lens 2 — training-data attribution: TrackStar, DataInf, TracIn, grad-dot/grad-cos and BM25 over an on-disk index.

    from attrilens.training import build_index, TrainingIndex
    idx = build_index(lm, "corpus.jsonl", "idx", method="trackstar", proj_dim=4096, eval_queries="queries.jsonl")
    result = TrainingIndex.open("idx", lm).trace("Question: ...\\nAnswer:", target=" Quenth", top_k=10)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_index": "attrilens.training.index",
    "TrainingIndex": "attrilens.training.index",
    "TraceResult": "attrilens.training.result",
    "Corpus": "attrilens.training.corpus",
    "make_corpus": "attrilens.training.corpus",
    "Example": "attrilens.training.gradients",
    "Featurizer": "attrilens.training.gradients",
    "MethodConfig": "attrilens.training.methods",
    "METHODS": "attrilens.training.methods",
    "finetune_lora": "attrilens.training.lora",
    "load_lora_lm": "attrilens.training.lora",
    "demo_section": "attrilens.training.demo",
    "build_demo_index": "attrilens.training.demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import on first use, so `attrilens --help` does not pay for torch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attrilens.training' has no attribute {name!r}")

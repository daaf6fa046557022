"""What a captured index's rows are: the step and learning rate of each (from the manifest's runs), and TracIn
summed over them."""

from __future__ import annotations

import numpy as np

from attrilens.errors import AttrilensError
from attrilens.training.capture.storage import CAPTURE_SCHEMA


def row_steps(manifest: dict) -> np.ndarray:
    """The step of every row of a captured index (from the manifest's runs)."""
    return _expand(manifest, 2).astype(np.int64)


def row_lrs(manifest: dict) -> np.ndarray:
    """The learning rate of every row of a captured index."""
    return _expand(manifest, 3)


def _expand(manifest: dict, col: int) -> np.ndarray:
    cap = manifest.get("capture") or {}
    if cap.get("schema") != CAPTURE_SCHEMA or "steps" not in cap:
        raise AttrilensError("This index was not captured during training (its manifest has no capture steps). "
                             "Use an index written by GradientCapture / `attrilens train --capture`.")
    out = np.zeros(manifest["corpus"]["n_blocks"])
    for start, n, step, lr in cap["steps"]:
        out[start : start + n] = (step, lr)[col - 2]
    return out


def tracin_scores(index, scores: np.ndarray) -> dict[str, float]:
    """TracIn from a captured grad-dot index: Σ over each example's rows of η_step · score (query at the final model).

    `scores` are `index.scores(query)` of every row; returns {example name: score}, highest first."""
    if not index.method.raw_dot_product:
        raise AttrilensError(f"TracIn sums raw gradient dot products; this index is {index.method_name}. Capture "
                             "with method grad-dot.")
    lrs = row_lrs(index.manifest)
    out: dict[str, float] = {}
    for name, s, lr in zip(index.corpus.docs, scores.tolist(), lrs.tolist(), strict=True):
        out[name] = out.get(name, 0.0) + lr * s
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))

"""Faithfulness of a context attribution to exact target LOO: outlier mAP, Spearman, top-k drop, gold hit rate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from attrilens.errors import AttrilensError

Scores = Sequence[float | None]


def _filled(scores: Scores) -> np.ndarray:
    """Scores as floats with pruned (None / NaN) sources tied below every scored one."""
    vals = np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    finite = vals[~np.isnan(vals)]
    floor = (finite.min() - 1.0) if finite.size else 0.0
    return np.where(np.isnan(vals), floor, vals)


def loo_outliers(exact: Scores, n_std: float = 2.0) -> list[int]:
    """Sources whose exact LOO score exceeds mean + n_std · std (population std over the episode's sources)."""
    x = np.asarray([float(s) for s in exact], dtype=np.float64)
    if x.size < 2:
        raise AttrilensError("Outliers need at least two exact LOO scores. Pass the full score list.")
    return np.flatnonzero(x > x.mean() + n_std * x.std()).tolist()


def average_precision(scores: Scores, relevant: Sequence[int]) -> float:
    """AP of ranking the sources by `scores` for the `relevant` ones (NaN when none is relevant).

    Ties (including all pruned sources) count as one threshold, as in sklearn's average_precision_score.
    """
    if not relevant:
        return math.nan
    from sklearn.metrics import average_precision_score

    y = np.zeros(len(scores), dtype=int)
    y[list(relevant)] = 1
    return float(average_precision_score(y, _filled(scores)))


def spearman(scores: Scores, exact: Scores) -> float:
    """Spearman rank correlation with exact LOO (pruned sources tied last; 0 when either side is constant)."""
    from scipy.stats import spearmanr

    a, b = _filled(scores), _filled(exact)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def ranking(scores: Scores) -> list[int]:
    """Source indices by decreasing score, pruned sources last (stable: ties keep context order)."""
    return np.argsort(-_filled(scores), kind="stable").tolist()


def gold_hit(scores: Scores, gold: int) -> float:
    """1.0 when the gold source ranks first, else 0.0."""
    return float(ranking(scores)[0] == gold)

"""Every benchmark's metrics, once: rankings, Spearman (tie-aware), outlier mAP, retrieval (MRR, recall@k), greedy match,
next-token agreement of a read-out with the model (precision@1, surprisal, KL).

Scores may contain None or NaN for sources a method pruned: they rank below every scored one, tied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from attrilens.errors import AttrilensError

if TYPE_CHECKING:
    import torch

Scores = Sequence[float | None]


def _filled(scores: Scores | np.ndarray) -> np.ndarray:
    """Scores as floats with pruned (None / NaN) sources tied below every scored one."""
    if isinstance(scores, np.ndarray):
        vals = scores.astype(np.float64)
    else:
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


def spearman(scores: Scores | np.ndarray, exact: Scores | np.ndarray) -> float:
    """Spearman rank correlation, ties given their mean rank (pruned sources tied last; 0 when a side is constant)."""
    from scipy.stats import spearmanr

    a, b = _filled(scores), _filled(exact)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def ranking(scores: Scores | np.ndarray) -> list[int]:
    """Indices by decreasing score, pruned sources last (stable: ties keep index order)."""
    return rank_order(scores).tolist()


def rank_order(scores: Scores | np.ndarray) -> np.ndarray:
    """`ranking` as an integer array (for long score vectors, e.g. every block of a training index)."""
    return np.argsort(-_filled(scores), kind="stable")


def gold_hit(scores: Scores, gold: int) -> float:
    """1.0 when the gold source ranks first, else 0.0."""
    return float(ranking(scores)[0] == gold)


def retrieval_metrics(order: Sequence[int] | np.ndarray, item_docs: Sequence[str], gold: Sequence[str],
                      k: int = 10) -> tuple[float, float, float]:
    """(reciprocal rank of the first gold document, recall@k of the gold documents, hit@k) of a ranking of items
    (e.g. index blocks) whose documents are `item_docs`."""
    docs = [item_docs[i] for i in order]
    gold_set = set(gold)
    rr = next((1.0 / (r + 1) for r, d in enumerate(docs) if d in gold_set), 0.0)
    top = set(docs[:k])
    return rr, len(top & gold_set) / len(gold_set), float(bool(top & gold_set))


def greedy_match(completion: str, target: str) -> bool:
    """Whether a greedy completion gives the target: it starts with it and the word ends there (" Paris" matches
    " Paris." but not " Parisian")."""
    if not completion.startswith(target):
        return False
    rest = completion[len(target):]
    return not rest or not rest[0].isalnum()


def next_token_agreement(readout_logits: torch.Tensor, final_logprobs: torch.Tensor,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, how a read-out next-token distribution agrees with the model's own final one (Patchscopes §4.1):
    (top-1 hit: read-out top-1 = final top-1, surprisal −log p_final(read-out top-1), KL(p_final ‖ p_read-out)),
    in nats, as three [n] float tensors. `readout_logits` [n, V] logits; `final_logprobs` [n, V] log-softmaxed."""
    import torch

    if readout_logits.shape != final_logprobs.shape:
        raise AttrilensError(f"Read-out logits {tuple(readout_logits.shape)} and final log-probabilities "
                             f"{tuple(final_logprobs.shape)} differ in shape. Pass one row of each per position.")
    logq = torch.log_softmax(readout_logits.float(), dim=-1)
    top = logq.argmax(-1)
    hit = (top == final_logprobs.argmax(-1)).float()
    surprisal = -final_logprobs.gather(1, top[:, None])[:, 0]
    kl = (final_logprobs.exp() * (final_logprobs - logq)).sum(-1)
    return hit, surprisal, kl

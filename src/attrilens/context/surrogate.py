"""ContextCite's surrogate model: random ablation masks, the logit target, and the sparse linear fit."""

from __future__ import annotations

import numpy as np
import torch

from attrilens.errors import AttrilensError


def random_masks(n_sources: int, n_ablations: int, *, keep_prob: float = 0.5, seed: int = 0) -> np.ndarray:
    """[n_ablations, n_sources] 0/1 keep masks, each source kept with probability `keep_prob` (seeded)."""
    if n_ablations < 2:
        raise AttrilensError(f"ContextCite needs at least 2 ablations, got {n_ablations}. Pass n_ablations >= 2.")
    rng = np.random.default_rng(seed)
    return (rng.random((n_ablations, n_sources)) < keep_prob).astype(np.float64)


def logit_target(logprobs: torch.Tensor) -> np.ndarray:
    """Per mask: (log p − log(1 − p)) / T with p = Π_t p(r_t), the regression target of ContextCite."""
    ll = logprobs.double().sum(dim=1)
    log1m = torch.log(-torch.expm1(ll.clamp(max=-1e-12)))
    return ((ll - log1m) / logprobs.shape[1]).numpy()


def fit(masks: np.ndarray, target: np.ndarray, *, alpha: float = 0.01) -> np.ndarray:
    """Lasso weights (one per source) of target ≈ masks · w + b; the weights are the attributions."""
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=alpha, fit_intercept=True, max_iter=10_000)
    model.fit(masks, target)
    return model.coef_.astype(np.float64)

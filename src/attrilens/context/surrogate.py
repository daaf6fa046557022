"""ContextCite's surrogate model, as the `context-cite` package (0.0.4) computes it: masks, target, Lasso fit.

- masks: mask i keeps each source with probability `keep_prob`, drawn by `np.random.RandomState(seed + i)`
  (the package's `_create_mask`), so the same n and seed give the package's masks;
- target: the logit of the response's probability, log P − log(1 − P) with P = Π_t p(r_t);
- fit: Lasso(alpha) of target / T on the *standardised* masks, the weights mapped back to mask units and
  multiplied by T (the package's `LassoRegression`): a weight is the change of the response's logit when the
  source is kept, in nats. (Before this matched the package, the fit skipped both steps: scores ≈ 1/T of these.)
"""

from __future__ import annotations

import numpy as np
import torch

from attrilens.errors import AttrilensError


def random_masks(n_sources: int, n_ablations: int, *, keep_prob: float = 0.5, seed: int = 0) -> np.ndarray:
    """[n_ablations, n_sources] 0/1 keep masks: mask i from RandomState(seed + i), as the context-cite package draws."""
    if n_ablations < 2:
        raise AttrilensError(f"ContextCite needs at least 2 ablations, got {n_ablations}. Pass n_ablations >= 2.")
    masks = np.zeros((n_ablations, n_sources), dtype=np.float64)
    for i in range(n_ablations):
        rng = np.random.RandomState(seed + i)
        masks[i] = rng.choice([False, True], size=n_sources, p=[1 - keep_prob, keep_prob])
    return masks


def sequence_logit(logprobs: torch.Tensor) -> np.ndarray:
    """Per mask: log P − log(1 − P) with P = Π_t p(r_t), from [n_masks, T] per-token log p (in float64)."""
    ll = logprobs.double().sum(dim=1)
    log1m = torch.log(-torch.expm1(ll.clamp(max=-1e-12)))
    return (ll - log1m).numpy()


def fit(masks: np.ndarray, outputs: np.ndarray, n_tokens: int, *, alpha: float = 0.01) -> np.ndarray:
    """The package's Lasso fit: weights (one per source) of outputs / T ≈ standardised masks · w + b, rescaled
    to mask units and times T. Constant mask columns get weight 0 (as StandardScaler leaves them)."""
    from sklearn.linear_model import Lasso
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if n_tokens < 1:
        raise AttrilensError(f"The fit needs at least one response token, got {n_tokens}.")
    scaler = StandardScaler()
    lasso = Lasso(alpha=alpha, random_state=0, fit_intercept=True)
    make_pipeline(scaler, lasso).fit(np.asarray(masks, dtype=np.float32), np.asarray(outputs) / n_tokens)
    return (lasso.coef_ / scaler.scale_ * n_tokens).astype(np.float64)

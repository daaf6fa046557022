"""TrackStar (Chang et al. 2024): Adam-corrected projected gradients, R^(-1/2) from train and eval features, unit norm.

Features: g ⊘ √(v + ε) (v: the final AdamW second moments), projected to d; then (λR_eval + (1−λ)R_train + δI)^(−1/2)
with λ where the eigenvalue curves cross and δ = damping · the mean non-zero eigenvalue of R; then unit norm.
Score = cosine of the finished training and query features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attrilens.errors import AttrilensError
from attrilens.training.checkpoints import require_model_dir
from attrilens.training.gradients import Featurizer, weight_modules
from attrilens.training.methods.base import TDA_METHODS
from attrilens.training.methods.gradient import GradientMethod, ProjectionOptions
from attrilens.training.preconditioning import Whitening, adam_scales, fit_whitening


@dataclass
class TrackStarOptions(ProjectionOptions):
    """TrackStar's knobs; each of the first three can be switched off for an ablation."""

    correction: bool = True  # divide by √(Adam second moment)
    use_r: bool = True  # apply (λR_eval + (1−λ)R_train)^(−1/2)
    unit_norm: bool = True  # unit-normalise features
    lam: float | None = None  # λ; None = where the eigenvalue curves cross
    k: int | None = None  # crossing component; None = min(1000, min(n_eval, n_train)/2)
    # δ = damping · trace(R)/rank(R). Smaller finds fact sources more often, larger tracks one-step influence
    # (tail-patch) more closely; 1e-2 balances the two on the demo (`attrilens bench training --damping-sweep`)
    damping: float = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.damping > 0:
            raise AttrilensError(f"damping must be positive (R is low-rank with fewer examples than dimensions), "
                                 f"got {self.damping}. Use e.g. 1e-2.")
        if self.lam is not None and not 0.0 <= self.lam <= 1.0:
            raise AttrilensError(f"λ must lie in [0, 1], got {self.lam}. Pass lam between 0 and 1, or none for the "
                                 "eigenvalue-crossing rule.")
        if self.k is not None and self.k < 0:
            raise AttrilensError(f"k (the crossing component) must be at least 0, got {self.k}.")


@TDA_METHODS.register("trackstar")
class TrackStar(GradientMethod):
    """TrackStar: optimizer-corrected projected gradients, R^(-1/2) from train and eval queries, cosine score."""

    Options = TrackStarOptions
    uses_eval_queries = True
    whitening: Whitening | None = None  # fitted by `fit`, or restored by `load`

    def make_views(self) -> list[tuple[Featurizer, float]]:
        """The final model, its gradients divided by √(Adam second moment) when `correction` is on."""
        scales = None
        if self.options.correction:
            model_dir = require_model_dir(self.model_dir, "TrackStar's optimizer correction")
            scales = adam_scales(model_dir, self.lm.model, weight_modules(self.lm.model, self.params))
        return [(self.featurizer(self.lm, scales), 1.0)]

    @property
    def needs_fit(self) -> bool:
        return self.options.use_r

    def fit(self, train_raw: torch.Tensor, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        """Fit R^(−1/2) from the raw training features and the raw eval-query features; λ goes in the manifest."""
        o = self.options
        self.whitening = fit_whitening(train_raw, eval_raw, lam=o.lam, k=o.k, damping=o.damping)
        return {"lambda": self.whitening.lam, "lambda_k": self.whitening.k}

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float()
        if self.options.use_r:
            if self.whitening is None:
                raise AttrilensError("TrackStar's R has not been fitted. Build the index first.")
            x = self.whitening.apply(x)
        if self.options.unit_norm:
            x = torch.nn.functional.normalize(x, dim=1)
        return x

    def state(self) -> dict[str, torch.Tensor]:
        if self.whitening is None:
            return {}
        return {f"whitening.{k}": v for k, v in self.whitening.tensors().items()}

    def load(self, state, corpus) -> None:
        w = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("whitening.")}
        if w:
            self.whitening = Whitening.from_tensors(w)

    @property
    def bounded(self) -> bool:
        return self.options.unit_norm

    @classmethod
    def benchmark_variants(cls, quick: bool) -> list[tuple[str, dict[str, Any]]]:
        """TrackStar, its ablations (one component off each) and other projection sizes d = 2^k."""
        d = 4096
        dims = [2**10, 2**12, 2**14] if quick else [2**10, 2**12, 2**14, 2**16]
        return [("TrackStar", {"proj_dim": d}),
                ("TrackStar − optimizer correction", {"proj_dim": d, "correction": False}),
                ("TrackStar − R", {"proj_dim": d, "use_r": False}),
                ("TrackStar − unit norm", {"proj_dim": d, "unit_norm": False}),
                ("TrackStar − size-proportional split (LoGra equal)", {"proj_dim": d, "allocation": "equal"})] + [
            (f"TrackStar d=2^{x.bit_length() - 1}", {"proj_dim": x}) for x in dims if x != d]

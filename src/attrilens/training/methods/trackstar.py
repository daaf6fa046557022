"""TrackStar (Chang et al. 2024): Adam-corrected projected gradients, R^(-1/2) from train and eval features, unit norm.

Features: g ⊘ √(v + ε) (v: the final AdamW second moments), projected to d; then (λR_eval + (1−λ)R_train + δI)^(−1/2)
with λ where the eigenvalue curves cross and δ = damping · the mean non-zero eigenvalue of R; then unit norm.
Score = cosine of the finished training and query features.

Where v comes from (`second_moments`): the optimizer state saved with the model (`optimizer.safetensors`), or an
estimate from gradients over a sample of the corpus being indexed (`attrilens.training.moments`) — what a
downloaded checkpoint needs; "auto" takes the optimizer state when the model directory has one. The manifest
records which ("second_moments": {"source": "optimizer" | "estimated", ...}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.training.corpus import Corpus
from attrilens.training.gradients import Example, Featurizer, weight_modules
from attrilens.training.methods.base import TDA_METHODS
from attrilens.training.methods.gradient import GradientMethod, ProjectionOptions
from attrilens.training.moments import (
    MOMENT_KINDS,
    Moments,
    estimate_second_moments,
    moment_scales,
    moments_from_tensors,
    moments_to_tensors,
    round_moments,
)
from attrilens.training.preconditioning import (
    OPTIMIZER_STATE,
    Whitening,
    adam_scales,
    fit_whitening,
    fit_whitening_moments,
    optimizer_state_problem,
)

SECOND_MOMENTS = ("auto", "optimizer", "estimate")
WEIGHTS = ("auto", "linear", "lora")


@dataclass
class TrackStarOptions(ProjectionOptions):
    """TrackStar's knobs; each of the first three can be switched off for an ablation."""

    # the weights featurised: auto = the LoRA matrices of a model carrying an adapter (what its fine-tuning trained,
    # and all its optimizer state covers), else every linear layer; "linear" or "lora" to choose
    weights: str = option("auto", choices=WEIGHTS, help="weights featurised: auto (an adapter's LoRA matrices, else "
                                                        "every linear layer), linear or lora")
    correction: bool = option(True, help="divide gradients by √(Adam second moment), so that rarely updated "
                                         "weights are not drowned out")
    second_moments: str = option("auto", choices=SECOND_MOMENTS,
                                 help="where v comes from: optimizer (the saved state), estimate (from the corpus), "
                                      "or auto (the optimizer state when the model has one)")
    # the estimate row × column factored ("adafactor": the fast factored path, out + in numbers per weight) or per
    # parameter ("adam"); a prototype on SmolLM2 (not the benchmark) gave recall@10 0.53 vs 0.51 and featurised
    # 2.3× faster with adafactor
    moment_kind: str = option("adafactor", choices=MOMENT_KINDS,
                              help="an estimate's form: adafactor (row × column factored, fast) or adam (per "
                                   "parameter)")
    moment_sample: int = option(256, help="corpus blocks the estimate averages over (a seeded sample; all when "
                                          "fewer)")
    moment_batch: int = option(8, help="blocks per gradient of the estimate (1: per-example gradients, slower)")
    moment_eps: float = option(1e-3, help="v + moment_eps · mean(v): keeps weights the sample never moves finite")
    use_r: bool = option(True, help="apply (λR_eval + (1−λ)R_train)^(−1/2), which downweights directions "
                                    "every example shares")
    unit_norm: bool = option(True, help="unit-normalise features: the score is a cosine, not dominated by "
                                        "long or high-loss blocks")
    lam: float | None = option(None, help="λ mixing R_eval into R_train (None: where the eigenvalue curves cross)")
    k: int | None = option(None, help="the crossing component of the λ rule (None: min(1000, min(n_eval, "
                                      "n_train)/2))")
    # δ = damping · trace(R)/rank(R). Smaller finds fact sources more often, larger tracks one-step influence
    # (tail-patch) more closely; 1e-2 balances the two on the demo (`attrilens bench training --damping-sweep`)
    damping: float = option(1e-2, help="ridge δ on R as a fraction of its mean eigenvalue: smaller finds fact "
                                       "sources, larger tracks one-step influence")

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
        if self.weights not in WEIGHTS:
            raise AttrilensError(f"Unknown weights {self.weights!r}. Use one of {', '.join(WEIGHTS)}.")
        if self.second_moments not in SECOND_MOMENTS:
            raise AttrilensError(f"Unknown second_moments {self.second_moments!r}. Use one of "
                                 f"{', '.join(SECOND_MOMENTS)} (--second-moments).")
        if self.moment_kind not in MOMENT_KINDS:
            raise AttrilensError(f"Unknown moment_kind {self.moment_kind!r}. Use one of {', '.join(MOMENT_KINDS)}.")
        if self.moment_sample < 1 or self.moment_batch < 1:
            raise AttrilensError(f"moment_sample and moment_batch must be at least 1, got {self.moment_sample} and "
                                 f"{self.moment_batch}.")
        if not self.moment_eps > 0:
            raise AttrilensError(f"moment_eps must be positive, got {self.moment_eps}. Use e.g. 1e-3.")


@TDA_METHODS.register("trackstar")
class TrackStar(GradientMethod):
    """TrackStar: optimizer-corrected projected gradients, R^(-1/2) from train and eval queries, cosine score."""

    Options = TrackStarOptions
    uses_eval_queries = True
    capturable = True
    corpus_options = ("second_moments", "moment_sample", "moment_batch")  # a capture reads the optimizer's instead
    whitening: Whitening | None = None  # fitted by `fit`, or restored by `load`
    moments: Moments | None = None  # estimated second moments: by `prepare`, or restored by `load`
    refused_state: str | None = None  # why "auto" did not use the model's optimizer state (it lost its range)

    def resolve_params(self, lm: LM) -> str:
        """The weights of the `weights` option ("auto": GradientMethod's rule — LoRA matrices on an adapter)."""
        weights = getattr(self.options, "weights", "auto")
        return self.default_params(lm) if weights == "auto" else weights

    def make_views(self) -> list[tuple[Featurizer, float]]:
        """The final model, its gradients divided by √(second moment) when `correction` is on (optimizer state
        now; an estimate once `prepare` has seen the corpus)."""
        self.moments_source = self._moments_source()
        scales = None
        if self.moments_source == "optimizer":
            scales = adam_scales(self.model_dir, self.lm.model, weight_modules(self.lm.model, self.params))
        return [(self.featurizer(self.lm, scales), 1.0)]

    def _moments_source(self) -> str | None:
        """"optimizer", "estimate", or None (no correction), from the options and the model directory."""
        o = self.options
        if not o.correction:
            return None
        has_state = self.model_dir is not None and (self.model_dir / OPTIMIZER_STATE).is_file()
        self.refused_state = optimizer_state_problem(self.model_dir) if has_state and o.second_moments == "auto" else None
        if self.refused_state:  # auto: a state that lost its range is not used; the manifest says why
            return "estimate"
        if o.second_moments == "optimizer" or (o.second_moments == "auto" and has_state):
            if self.model_dir is None or not self.model_dir.is_dir():
                raise AttrilensError("TrackStar's optimizer correction needs the model directory with its optimizer "
                                     "state, but none is known for this model. Pass model_dir= (--model DIR), or "
                                     "estimate the second moments from the corpus: --second-moments estimate "
                                     "(second_moments=\"estimate\").")
            return "optimizer"
        return "estimate"

    @property
    def moments_info(self) -> dict[str, Any]:
        """Where the correction's second moments come from (the manifest's "second_moments")."""
        o = self.options
        if self.moments_source is None:
            return {"source": None}
        if self.moments_source == "optimizer":
            return {"source": "optimizer", "kind": "adam", "file": OPTIMIZER_STATE}
        info = {"source": "estimated", "kind": o.moment_kind, "sample": o.moment_sample, "batch_size": o.moment_batch,
                "eps": o.moment_eps, "gradient": "per-example" if o.moment_batch == 1 else "per-batch",
                "loss": "mean token loss"}
        if self.moments is not None:
            info["sample"] = self.moment_rows
        if self.refused_state:
            info["optimizer_state_refused"] = self.refused_state
        return info

    def layout(self) -> dict[str, Any]:
        return {**super().layout(), "second_moments": self.moments_info}

    @property
    def needs_prepare(self) -> bool:
        return self.moments_source == "estimate" and self.moments is None

    def prepare(self, corpus: Corpus, progress: bool = False) -> dict[str, Any]:
        """Estimate the second moments from a seeded sample of the corpus (when they come from an estimate)."""
        if not self.needs_prepare:
            return {"second_moments": self.moments_info}
        o = self.options
        order = np.random.default_rng(o.seed).permutation(len(corpus))[: o.moment_sample]  # random batches
        examples = [Example.block(corpus.tokens[r], corpus.block_id(r)) for r in order.tolist()]
        moments = estimate_second_moments(self.views[0][0], examples, kind=o.moment_kind, batch_size=o.moment_batch,
                                          progress=progress)
        self.use_moments(round_moments(moments), len(examples))
        return {"second_moments": self.moments_info}

    def use_moments(self, moments: Moments, rows: int) -> None:
        """Correct with these second moments (estimated from `rows` examples, or a captured optimizer's)."""
        self.moments, self.moment_rows = moments, rows
        self.moments_source = "estimate"
        self.views[0][0].set_scales(moment_scales(moments, self.options.moment_eps))

    def featurize(self, examples) -> torch.Tensor:
        if self.needs_prepare:
            raise AttrilensError("TrackStar has no second moments to correct the gradients with: build the index "
                                 "first (it estimates them from the corpus), or, for an index built with the "
                                 "optimizer state, pass the model directory that holds it (model_dir=, --model DIR).")
        return super().featurize(examples)

    @property
    def needs_fit(self) -> bool:
        return self.options.use_r

    def fit(self, train_raw: torch.Tensor, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        """Fit R^(−1/2) from the raw training features and the raw eval-query features; λ goes in the manifest."""
        o = self.options
        self.whitening = fit_whitening(train_raw, eval_raw, lam=o.lam, k=o.k, damping=o.damping)
        return {"lambda": self.whitening.lam, "lambda_k": self.whitening.k}

    @property
    def fits_moments(self) -> bool:
        """Whether R can be fitted from the reduced statistic ΣΦᵀΦ (`fit_moments`) instead of every raw feature."""
        return self.options.use_r

    def fit_moments(self, train_moments: torch.Tensor, n_train: int, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        """`fit` from Σ_shards ΦᵀΦ of the raw training features (a distributed build reduces to it): the same R."""
        o = self.options
        self.whitening = fit_whitening_moments(train_moments, n_train, eval_raw, lam=o.lam, k=o.k, damping=o.damping)
        return {"lambda": self.whitening.lam, "lambda_k": self.whitening.k, "r_fit": "second-moment reduction"}

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
        out = {}
        if self.whitening is not None:
            out.update({f"whitening.{k}": v for k, v in self.whitening.tensors().items()})
        if self.moments is not None:
            out.update(moments_to_tensors(self.moments))
            out["moments_rows"] = torch.tensor([self.moment_rows])
        return out

    def load(self, state, corpus) -> None:
        w = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("whitening.")}
        if w:
            self.whitening = Whitening.from_tensors(w)
        moments = moments_from_tensors(state)
        if moments:  # the index was built with estimated moments: use exactly those, whatever "auto" finds now
            rows = int(state["moments_rows"][0]) if "moments_rows" in state else self.options.moment_sample
            self.use_moments(moments, rows)

    @property
    def needs_optimizer_state(self) -> bool:
        """With its correction on, a capture divides each step's rows by the optimizer's second moments then."""
        return bool(self.options.correction)

    def capture_facts(self, optimizer_step: int) -> dict[str, Any]:
        """How a capture corrected its rows: by the optimizer's moments at each step, queries by the final ones."""
        o = self.options
        if not self.needs_optimizer_state:
            return {"second_moments": {"source": None}}
        return {"second_moments": {
            "source": "optimizer", "captured": True, "kind": o.moment_kind, "eps": o.moment_eps,
            "rows": "each step's rows divided by √(v̂ + eps·mean v̂), v̂ = the optimizer's exp_avg_sq after that "
                    "step's update / (1 − β2^t)" + (" as its row × column means (r cᵀ / mean r)"
                                                    if o.moment_kind == "adafactor" else ""),
            "queries": f"the same with the final v̂ (optimizer step {optimizer_step}), stored in "
                       "preconditioner.safetensors"}}

    def check_state(self) -> None:
        if self.options.use_r and self.whitening is None:
            raise AttrilensError("TrackStar's fitted R^(-1/2) is not in this index (its preconditioner.safetensors is "
                                 "missing or was replaced). Rebuild the index.")

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

"""TracIn (Pruthi et al. 2020): Σ_c η_c ⟨g_c(z), g_c(q)⟩ over the saved checkpoints c and the final model.

Each checkpoint's projected gradients form one block of the stored features, scaled by √η_c on both sides, so a
block's dot product is η_c ⟨g_c(z), g_c(q)⟩; the blocks are aggregated by mean or median (LLM Attributor).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from attrilens.lm import LM
from attrilens.options import option
from attrilens.training.checkpoints import (
    check_aggregate,
    checkpoint_lms,
    load_checkpoint_lm,
    lora_base_with_checkpoints,
    require_model_dir,
    saved_checkpoints,
)
from attrilens.training.gradients import Featurizer
from attrilens.training.methods.base import TDA_METHODS
from attrilens.training.methods.gradient import GradientMethod, ProjectionOptions
from attrilens.training.search import AGGREGATES, ScoreStream, checkpoint_dot_stream
from attrilens.training.store import Shards


@dataclass
class TracInOptions(ProjectionOptions):
    """TracIn's knobs: the projection, and how the per-checkpoint scores are combined."""

    aggregate: str = option("mean", choices=AGGREGATES, help="how the per-checkpoint scores combine: mean, or "
                                                             "median (LLM Attributor's default; robust to one "
                                                             "odd checkpoint)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_aggregate(self.aggregate)


@TDA_METHODS.register("tracin")
class TracIn(GradientMethod):
    """TracIn: learning-rate-weighted gradient dot products summed over the saved training checkpoints."""

    Options = TracInOptions
    capture_refusal = "capture grad-dot and sum a document's rows with tracin_scores: TracIn over every step"

    def make_views(self) -> list[tuple[Featurizer, float]]:
        """Every saved checkpoint and the final model, each block scaled by √(its learning rate); a LoRA run's
        checkpoints are adapters, loaded onto its base."""
        model_dir = require_model_dir(self.model_dir, "TracIn")
        self.checkpoints = saved_checkpoints(model_dir)
        base = lora_base_with_checkpoints(model_dir)
        load = partial(LM.from_pretrained, base=base) if base else partial(load_checkpoint_lm, tokenizer=self.lm.tokenizer)
        return [(self.featurizer(lm), lr**0.5) for lm, lr in checkpoint_lms(self.lm, model_dir, self.checkpoints, load)]

    def score_stream(self, shards: Shards, query: torch.Tensor) -> ScoreStream:
        """One dot product per checkpoint block, then their mean or median."""
        yield from checkpoint_dot_stream(shards, query, self.n_blocks, self.options.aggregate)

    @classmethod
    def benchmark_variants(cls, quick: bool) -> list[tuple[str, dict[str, Any]]]:
        return [("TracIn", {"proj_dim": 4096})]

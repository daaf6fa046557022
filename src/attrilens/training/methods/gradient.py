"""`GradientMethod`: the shared base of the gradient methods — per-example loss-gradient features of one or more
model views (the final model, or every saved checkpoint) side by side, each view's block scaled by a weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.training.gradients import Example, Featurizer, has_lora, weight_modules
from attrilens.training.methods.base import TDAMethod, TDAOptions
from attrilens.training.projection import ALLOCATIONS, default_proj_dim


@dataclass
class ProjectionOptions(TDAOptions):
    """Options of the projected-gradient methods: how many features, the projection seed and how d is split."""

    proj_dim: int | None = option(4096, help="projected features per checkpoint (None: full gradients); more "
                                             "features track the exact gradient closer and store more")
    seed: int = option(0, help="projection seed: an index and its queries must share it")
    allocation: str = option("proportional", choices=ALLOCATIONS,
                             help="how proj_dim is split over the weights: proportional to each one's size, or "
                                  "equal (LoGra's one side length)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.proj_dim is not None and self.proj_dim < 1:
            raise AttrilensError(f"proj_dim must be positive, got {self.proj_dim}.")
        if self.allocation not in ALLOCATIONS:
            raise AttrilensError(f"Unknown projection allocation {self.allocation!r}. Use one of {', '.join(ALLOCATIONS)}.")


class GradientMethod(TDAMethod):
    """Features = [w_c · g_c(x)] over model views c (one Featurizer each); subclasses choose the views."""

    # which weights are featurised: "auto" = the LoRA matrices of a model carrying an adapter (what its fine-tuning
    # trained), else every linear layer; or always "linear" / "lora"
    params: ClassVar[str] = "auto"

    def __init__(self, options: TDAOptions, lm: LM, model_dir: Path | str | None = None, *, batch_size: int = 16):
        super().__init__(options, lm, model_dir, batch_size=batch_size)
        self.params = self.resolve_params(lm)  # before the views are made
        self.checkpoints: list[tuple[str, float]] = []  # (path, learning rate) of the views, when they are checkpoints
        self.views: list[tuple[Featurizer, float]] = self.make_views()
        self.block_dim = self.views[0][0].dim
        self.n_blocks = len(self.views)
        self.dim = self.block_dim * self.n_blocks

    @classmethod
    def default_params(cls, lm: LM) -> str:
        """The weights featurised on `lm` by default ("linear" or "lora")."""
        if cls.params == "auto":
            return "lora" if has_lora(lm.model) else "linear"
        return cls.params

    def resolve_params(self, lm: LM) -> str:
        """The weights this instance featurises (its options may override the default)."""
        return self.default_params(lm)

    @classmethod
    def default_proj_dim(cls, lm: LM) -> int:
        """The projection size when none is given: `projection.default_proj_dim` of the weights featurised (at most
        their full gradient's size)."""
        modules = weight_modules(lm.model, cls.default_params(lm))
        return min(default_proj_dim(len(modules)), sum(m.weight.numel() for m in modules.values()))

    def make_views(self) -> list[tuple[Featurizer, float]]:
        """(featuriser, weight) per model view; by default the final model alone, weight 1."""
        return [(self.featurizer(self.lm), 1.0)]

    def featurizer(self, lm: LM, scales: dict[str, torch.Tensor] | None = None) -> Featurizer:
        """A Featurizer of `lm` with this method's parameters and projection (and optional per-weight scales)."""
        o = self.options
        return Featurizer(lm, params=self.params, scales=scales, proj_dim=o.proj_dim, seed=o.seed, allocation=o.allocation)

    @property
    def layer_slices(self) -> dict[str, tuple[int, int]]:
        """Column range of each featurised weight inside one view's block."""
        return self.views[0][0].slices()

    def featurize(self, examples: Sequence[Example]) -> torch.Tensor:
        """Per-example features before any preconditioning: [N, dim], the views' weighted blocks side by side."""
        bs = self.batch_size
        return torch.cat([f.features(examples, batch_size=bs) * w for f, w in self.views], dim=1)

    @property
    def query_passes(self) -> int:
        return self.n_blocks

    def layout(self) -> dict[str, Any]:
        return {"dim": self.dim, "block_dim": self.block_dim, "n_blocks_per_example": self.n_blocks,
                "weights": self.params, "layers": self.layer_slices, "checkpoints": self.checkpoints}

    @property
    def supports_faiss(self) -> bool:
        return self.n_blocks == 1

"""grad-dot and grad-cos: the plain gradient baselines — projected loss gradients compared by dot product or cosine."""

from __future__ import annotations

from typing import Any

import torch

from attrilens.training.methods.base import TDA_METHODS
from attrilens.training.methods.gradient import GradientMethod, ProjectionOptions


@TDA_METHODS.register("grad-dot")
class GradDot(GradientMethod):
    """Dot product of projected loss gradients (no optimizer correction, no preconditioner)."""

    Options = ProjectionOptions
    capturable = True
    raw_dot_product = True
    legacy_params = "linear"  # what an index without "weights" in its manifest featurised (even on an adapter)

    @classmethod
    def benchmark_variants(cls, quick: bool) -> list[tuple[str, dict[str, Any]]]:
        return [(cls.name, {"proj_dim": 4096})]


@TDA_METHODS.register("grad-cos")
class GradCos(GradDot):
    """Cosine of projected loss gradients (grad-dot on unit-normalised features)."""

    raw_dot_product = False

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Unit-normalised gradients."""
        return torch.nn.functional.normalize(raw.float(), dim=1)

    @property
    def bounded(self) -> bool:
        return True

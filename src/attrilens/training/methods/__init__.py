"""Training-data attribution methods, one registered class per file: `TDA_METHODS.get("trackstar")`.

Built in: bm25, grad-dot, grad-cos, tracin, datainf, trackstar (registration order: the benchmark's row order).
Add one with `@TDA_METHODS.register("name")` on a `TDAMethod` subclass that carries its own `Options` dataclass.
"""

from __future__ import annotations

# Importing a method's module registers it; this order (baseline first) is the order of the CLI help and the
# benchmark rows.
# isort: off
from attrilens.training.methods import bm25, grad, tracin, datainf, trackstar  # noqa: F401
# isort: on
from attrilens.training.methods.base import TDA_METHODS, Query, TDAMethod, TDAOptions
from attrilens.training.methods.gradient import GradientMethod, ProjectionOptions

__all__ = ["TDA_METHODS", "GradientMethod", "ProjectionOptions", "Query", "TDAMethod", "TDAOptions"]

"""The context lens's wrappers, by name: `CONTEXT_WRAPPERS` (naive, cached, hierarchical, proxy, proxy-pruning)."""

from attrilens.context.wrappers import cached, hierarchical, naive, proxy, proxy_pruning  # noqa: F401  (they register)
from attrilens.context.wrappers.base import (
    CONTEXT_WRAPPERS,
    ContextWrapper,
    DropsWrapper,
    ScorerWrapper,
    SourceDrops,
)

__all__ = ["CONTEXT_WRAPPERS", "ContextWrapper", "DropsWrapper", "ScorerWrapper", "SourceDrops"]

"""The context lens's wrappers, by name: `CONTEXT_WRAPPERS` (naive, cached, knockout, hierarchical,
proxy, proxy-pruning, attention-pruning)."""

from attrilens.context.wrappers import (  # noqa: F401  (they register)
    attention_pruning,
    cached,
    hierarchical,
    knockout,
    naive,
    proxy,
    proxy_pruning,
)
from attrilens.context.wrappers.base import (
    CONTEXT_WRAPPERS,
    ContextWrapper,
    DropsWrapper,
    ScorerWrapper,
    SourceDrops,
)

__all__ = ["CONTEXT_WRAPPERS", "ContextWrapper", "DropsWrapper", "ScorerWrapper", "SourceDrops"]

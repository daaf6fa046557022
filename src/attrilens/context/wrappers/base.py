"""`ContextWrapper`: a composable stage around a method's scorer or its per-source drop computation.

Two kinds: a `ScorerWrapper` chooses the scorer (naive or KV-cached passes) of methods that use one; a
`DropsWrapper` wraps the per-source drop computation of methods that ablate sources (hierarchical pruning,
a proxy model). Wrappers in the same `slot` exclude each other; `order` places a wrapper in the pipeline
(lower = inner) and in the canonical method name.
"""

from __future__ import annotations

from typing import ClassVar

from attrilens.context.methods.base import ContextMethod
from attrilens.context.options import Configurable
from attrilens.context.run import AttributionRun, SourceDrops
from attrilens.context.scorers import Scorer
from attrilens.registry import Registry


class ContextWrapper(Configurable):
    """A stage that combines with methods declaring the capability it needs (see `applies_to`)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    option_kind = "context wrapper"
    slot: ClassVar[str | None] = None  # wrappers sharing a slot exclude each other; None: the wrapper's own name
    order: ClassVar[int] = 0
    proxy_mode: ClassVar[str | None] = None  # what a proxy model does here ("scores", "prune"); None: no proxy
    approximation: ClassVar[str | None] = None  # how this stage's scores may differ from exact LOO (in the result)

    @classmethod
    def slot_name(cls) -> str:
        """The slot this wrapper fills (at most one wrapper per slot in a method name)."""
        return cls.slot or cls.name

    @classmethod
    def applies_to(cls, method: type[ContextMethod]) -> bool:
        """Whether this wrapper combines with `method` (from the capabilities the method declares)."""
        raise NotImplementedError

    def check(self, level: str) -> None:
        """Refuse a source level this wrapper cannot work at (AttrilensError naming the fix)."""


class ScorerWrapper(ContextWrapper):
    """Chooses the scorer class of a method that uses one."""

    slot = "scorer"
    scorer_class: ClassVar[type[Scorer]]

    @classmethod
    def applies_to(cls, method: type[ContextMethod]) -> bool:
        """Methods that use a scorer."""
        return method.takes_scorer()


class DropsWrapper(ContextWrapper):
    """Wraps the per-source drop computation of a method that ablates sources."""

    @classmethod
    def applies_to(cls, method: type[ContextMethod]) -> bool:
        """Methods that ablate sources."""
        return method.ablates_sources

    def wrap(self, inner: SourceDrops, method: ContextMethod, run: AttributionRun) -> SourceDrops:
        """The drop computation with this stage around `inner` (`method.drops` gives LOO on any candidates)."""
        raise NotImplementedError(f"{type(self).__name__} must implement wrap(inner, method, run).")


CONTEXT_WRAPPERS: Registry[type[ContextWrapper]] = Registry("context wrapper")

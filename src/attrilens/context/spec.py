"""Method names: one estimator and its wrappers joined by "+", e.g. "cached+hierarchical+proxy-pruning".

Grammar (what each part means comes from the registries; what combines from the capabilities classes declare):
  - at most one estimator of `CONTEXT_METHODS`; none named means "loo" (exact leave-one-out);
  - "loo" also spells naive passes: "loo" alone is naive exact LOO, "loo+contextcite" = "naive+contextcite";
  - any wrappers of `CONTEXT_WRAPPERS` the estimator accepts, at most one per slot (naive|cached,
    proxy|proxy-pruning); a method that uses a scorer gets "cached" unless "naive"/"loo" is given.
The canonical name lists the wrappers by `order`, then the estimator (left out for "loo", whose naive form
is spelled "loo"): `parse_method("hierarchical+proxy-pruning").name == "cached+hierarchical+proxy-pruning"`.
Either spelling of a name (hyphens or underscores) is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from attrilens.context.methods import CONTEXT_METHODS, ContextMethod
from attrilens.context.wrappers import CONTEXT_WRAPPERS, ContextWrapper, ScorerWrapper
from attrilens.errors import AttrilensError
from attrilens.registry import canonical

DEFAULT_METHOD = "loo"  # the estimator when a name names none; as a part, it also asks for naive passes
NAIVE, DEFAULT_SCORER = "naive", "cached"


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name: the estimator and its wrappers (inner first), and the canonical name."""

    method: str
    wrappers: tuple[str, ...]

    @property
    def name(self) -> str:
        """The canonical spelling recorded in results ("cached", "loo+hierarchical", "naive+contextcite")."""
        parts = list(self.wrappers)
        if self.method != DEFAULT_METHOD:
            parts.append(self.method)
        elif parts and parts[0] == NAIVE:
            parts[0] = DEFAULT_METHOD
        return "+".join(parts)

    def method_class(self) -> type[ContextMethod]:
        """The registered estimator class."""
        return CONTEXT_METHODS.get(self.method)

    def wrapper_classes(self) -> list[type[ContextWrapper]]:
        """The registered wrapper classes, inner first."""
        return [CONTEXT_WRAPPERS.get(w) for w in self.wrappers]

    @property
    def cached(self) -> bool:
        """Whether the scorer reuses the KV cache (the "cached" wrapper)."""
        return DEFAULT_SCORER in self.wrappers

    @property
    def hierarchical(self) -> bool:
        """Whether paragraphs are pruned first (the "hierarchical" wrapper)."""
        return "hierarchical" in self.wrappers

    @property
    def proxy(self) -> str | None:
        """What the proxy model does ("scores", "prune"), or None without one."""
        return next((w.proxy_mode for w in self.wrapper_classes() if w.proxy_mode), None)


def method_names() -> list[str]:
    """Every part a method name may use: the estimators, then the wrappers."""
    return CONTEXT_METHODS.names() + CONTEXT_WRAPPERS.names()


def parse_method(method: str) -> MethodSpec:
    """Parse a "+"-joined method name (see the module docstring); bad names raise AttrilensError with the fix."""
    parts = list(dict.fromkeys(canonical(p) for p in str(method).split("+") if p.strip()))
    if not parts or any(p not in CONTEXT_METHODS and p not in CONTEXT_WRAPPERS for p in parts):
        raise AttrilensError(f"Unknown method {method!r}. Choose one of {', '.join(method_names())} or join LOO options "
                             "with '+' (e.g. cached+hierarchical+proxy-pruning).")
    estimators = [p for p in parts if p in CONTEXT_METHODS and p != DEFAULT_METHOD]
    if len(estimators) > 1:
        raise AttrilensError(f"Method {method!r} names two estimators; pick one of {', '.join(estimators)}.")
    estimator = estimators[0] if estimators else DEFAULT_METHOD
    cls = CONTEXT_METHODS.get(estimator)
    wrappers = [CONTEXT_WRAPPERS.get(NAIVE if p == DEFAULT_METHOD else p) for p in parts if p not in estimators]
    slots: dict[str, str] = {}
    for w in wrappers:
        if w.slot_name() in slots and slots[w.slot_name()] != w.name:
            raise AttrilensError(f"Method {method!r} asks for both {slots[w.slot_name()]} and {w.name}; pick one.")
        slots[w.slot_name()] = w.name
    bad = [w.name for w in wrappers if not w.applies_to(cls)]
    if bad:
        allowed = [n for n, w in CONTEXT_WRAPPERS.items() if w.applies_to(cls)]
        fix = f"combine it only with {', '.join(allowed)}" if allowed else f"use method={estimator!r} alone"
        raise AttrilensError(f"{estimator} cannot be combined with {', '.join(bad)}; {fix}.")
    names = {w.name for w in wrappers}
    if cls.takes_scorer() and not any(issubclass(w, ScorerWrapper) for w in wrappers):
        names.add(DEFAULT_SCORER)
    ordered = sorted(names, key=lambda n: (CONTEXT_WRAPPERS.get(n).order, CONTEXT_WRAPPERS.names().index(n)))
    return MethodSpec(estimator, tuple(ordered))

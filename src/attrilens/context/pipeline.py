"""`Pipeline`: a parsed method built into its estimator and wrappers, each with its own options; runs one attribution.

Options: the attributor's shared values (top_k, n_ablations, ...) go to every component whose `Options` has a
field of that name. A value no component of this method takes is refused, unless it is the default of every
registered component that takes it (then nothing was asked for); a name no registered component takes is refused.
`option_values` turns `NAME=VALUE` text (`--option`, the web form) into those values, typed by the fields of the
method's own components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrilens.context.methods import CONTEXT_METHODS, ContextMethod, Estimate
from attrilens.context.options import Configurable
from attrilens.context.run import AttributionRun, SourceDrops
from attrilens.context.scorers import Scorer
from attrilens.context.spec import MethodSpec
from attrilens.context.wrappers import CONTEXT_WRAPPERS, DropsWrapper, ScorerWrapper
from attrilens.errors import AttrilensError
from attrilens.options import OptionInfo, parse_texts, refuse_unknown


def registered_components() -> list[tuple[str, type[Configurable]]]:
    """Every registered estimator and wrapper, by name."""
    return [*CONTEXT_METHODS.items(), *CONTEXT_WRAPPERS.items()]


def components(spec: MethodSpec) -> list[type[Configurable]]:
    """The estimator and the wrappers (inner first) of a parsed method."""
    return [spec.method_class(), *spec.wrapper_classes()]


def describe_method(spec: MethodSpec) -> list[OptionInfo]:
    """The options a method takes, each once (the first component taking a name describes it)."""
    seen: dict[str, OptionInfo] = {}
    for c in components(spec):
        for info in c.describe_options():
            seen.setdefault(info.name, info)
    return list(seen.values())


def option_values(spec: MethodSpec, texts: Mapping[str, str] | None) -> dict[str, Any]:
    """{name: text} → values typed by the field of the method's component that takes each name; a name none of
    its components takes is refused, listing the ones they do."""
    texts = dict(texts or {})
    refuse_unknown(texts, [o.name for o in describe_method(spec)], f"method {spec.name!r}")
    out: dict[str, Any] = {}
    for name, text in texts.items():
        owner = next(c for c in components(spec) if name in c.option_names())
        out.update(parse_texts(owner.Options, {name: text}, owner.option_owner()))
    return out


def refuse_unused_options(spec: MethodSpec, options: Mapping[str, Any]) -> None:
    """AttrilensError for an option this method does not take (a default value is let through: nothing asked)."""
    taken = set().union(*(c.option_names() for c in components(spec)))
    for key, value in options.items():
        if key in taken:
            continue
        takers = [(n, c) for n, c in registered_components() if key in c.option_names()]
        if not takers:
            raise AttrilensError(f"Unknown option {key!r} for context methods. Pass one of "
                                 f"{', '.join(sorted({o for _, c in registered_components() for o in c.option_names()}))}.")
        for _, c in takers:
            c.Options(**{key: value})  # a bad value names the option and the fix
        if all(c.option_default(key) == value for _, c in takers):
            continue
        raise AttrilensError(f"Option {key}={value!r} does not apply to method {spec.name!r}; drop it, or use a "
                             f"method with {', '.join(n for n, _ in takers)}.")


class Pipeline:
    """One method ready to run: its estimator, scorer kind and drop wrappers (inner first), with their options."""

    def __init__(self, spec: MethodSpec, options: Mapping[str, Any], run_values: Mapping[str, Any] | None = None):
        """`options` are checked against what the method takes; `run_values` (the attributor's own settings,
        e.g. seed) go to the components that take them and are never refused."""
        refuse_unused_options(spec, options)
        values = {**(run_values or {}), **options}
        self.spec = spec
        self.method: ContextMethod = spec.method_class().from_values(values)
        self.wrappers = [cls.from_values(values) for cls in spec.wrapper_classes()]

    @property
    def needs_proxy(self) -> bool:
        """Whether a wrapper runs a proxy model."""
        return any(w.proxy_mode for w in self.wrappers)

    @property
    def scorer_class(self) -> type[Scorer] | None:
        """The scorer the method's runs use (naive or cached), None for methods without one."""
        return next((w.scorer_class for w in self.wrappers if isinstance(w, ScorerWrapper)), None)

    def approximations(self) -> list[str]:
        """How this method's scores may differ from the target's exact LOO, one line per stage that approximates."""
        return [w.approximation for w in self.wrappers if w.approximation]

    def check(self, level: str) -> None:
        """Refuse a source level one of the wrappers cannot work at."""
        for w in self.wrappers:
            w.check(level)

    def run(self, run: AttributionRun) -> Estimate:
        """The method's estimate; for methods that ablate sources, their drops through every drop wrapper."""
        if not self.method.ablates_sources:
            return self.method.estimate(run)
        drops: SourceDrops = self.method.drops
        for w in self.wrappers:
            if isinstance(w, DropsWrapper):
                drops = w.wrap(drops, self.method, run)
        return Estimate.additive(drops(run.scorer(), run.sources))

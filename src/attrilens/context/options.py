"""Options of context methods and wrappers: each component carries its own dataclass, filled from shared values.

`ContextAttributor(top_k=..., n_ablations=..., ...)` hands every component the values whose names its `Options`
dataclass has; the dataclass validates them in `__post_init__`. Every field needs a default, so a component
can be built from any subset of the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class NoOptions:
    """The options of a component that takes none."""


class Configurable:
    """A component with an `Options` dataclass, built from the shared option values it takes."""

    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def option_names(cls) -> set[str]:
        """The names of the options this component takes."""
        return {f.name for f in fields(cls.Options)}

    @classmethod
    def option_default(cls, name: str) -> Any:
        """The default of one of this component's options."""
        f = next(f for f in fields(cls.Options) if f.name == name)
        return f.default_factory() if f.default is MISSING else f.default

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Configurable:
        """This component with the values its options take (the others are not its business)."""
        return cls(cls.Options(**{k: v for k, v in values.items() if k in cls.option_names()}))

"""Options of context methods and wrappers: each component carries its own dataclass, filled from shared values.

`ContextAttributor(top_k=..., n_ablations=..., ...)` hands every component the values whose names its `Options`
dataclass has; the dataclass validates them in `__post_init__`. Every field needs a default, so a component
can be built from any subset of the values. The protocol itself (`option`, `describe`, `build_options`) is the
one every lens shares: `attrilens.options`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrilens.options import HasOptions, NoOptions

__all__ = ["Configurable", "NoOptions"]


class Configurable(HasOptions):
    """A component with an `Options` dataclass, built from the shared option values it takes."""

    option_kind = "context component"

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Configurable:
        """This component with the values its options take (the others are not its business)."""
        return cls(cls.Options(**{k: v for k, v in values.items() if k in cls.option_names()}))

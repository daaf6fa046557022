"""Name → class registries: how each lens finds its methods, so that adding a method is one file.

A method class registers itself with a decorator (``@CONTEXT_METHODS.register("loo")``). Names are spelled with
hyphens; the same name with underscores is accepted everywhere (``logit_lens`` finds ``logit-lens``). The CLI's
choices and help, the web app's request models, the benchmark grids and the docs all read `names()` and
`describe()`, never a list of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from attrilens.errors import AttrilensError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def canonical(name: str) -> str:
    """The registry spelling of a name: lower case, underscores as hyphens, surrounding space dropped."""
    return str(name).strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Classes of one kind (context methods, training-data methods, Patchscope presets) by hyphenated name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Class decorator: register under `name` and set the class's `name`; a taken name is an error."""
        if not _NAME.match(name):
            raise AttrilensError(f"{self.kind} name {name!r} must be lower-case words joined by hyphens, e.g. 'grad-dot'.")

        def add(cls: T) -> T:
            if name in self._entries and not replace:
                raise AttrilensError(f"A {self.kind} named {name!r} is already registered. Pick another name "
                                     "or pass replace=True.")
            cls.name = name  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return add

    def unregister(self, name: str) -> None:
        """Remove a registration (tests that register a toy method clean up with this)."""
        self._entries.pop(canonical(name), None)

    def get(self, name: str) -> T:
        """The class registered as `name` (either spelling); an unknown name lists the known ones."""
        key = canonical(name)
        if key not in self._entries:
            raise AttrilensError(f"Unknown {self.kind} {name!r}. Choose one of {', '.join(self.names())}.")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def describe(self) -> str:
        """One line per entry, "name: summary" (from the class's `summary` or its docstring's first line)."""
        return "\n".join(f"{n}: {summary_of(c)}" for n, c in self._entries.items())


def summary_of(cls: object) -> str:
    """A class's one-line summary: its `summary` attribute, else the first line of its docstring."""
    text = getattr(cls, "summary", None) or (getattr(cls, "__doc__", None) or "").strip().splitlines()[:1]
    return text if isinstance(text, str) else (text[0] if text else "")

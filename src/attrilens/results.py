"""What the results of the three lenses share: a cost record, JSON with a versioned schema, pandas, HTML, widget.

JSON is the contract between the Python API, the CLI, the web app and the tests. Each lens's result is a
dataclass subclassing `Result`, with `SCHEMA = "attrilens/<kind>/v1"` and `to_dict` / `from_dict` / `to_frame`.
A result draws itself (`to_html`, `show`) through the renderer the front end registers (`register_renderer`;
`import attrilens` registers `attrilens.view`), so the core never imports the views.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from attrilens.errors import AttrilensError


class Renderer(Protocol):
    """How result documents are drawn: a self-contained HTML page, and the interactive Jupyter widget."""

    def page(self, documents: list[dict[str, Any]], title: str) -> str: ...
    def widget(self, documents: list[dict[str, Any]]) -> Any: ...


_renderer: Renderer | None = None  # the one registered renderer


def register_renderer(renderer: Renderer) -> None:
    """Make `renderer` the one `Result.to_html` and `Result.show` draw with (the views register themselves)."""
    global _renderer
    _renderer = renderer


def renderer() -> Renderer:
    """The registered renderer; none is an error naming the import that registers the views."""
    if _renderer is None:
        raise AttrilensError("No renderer is registered to draw results. `import attrilens.view` (which "
                             "`import attrilens` does) registers the front end.")
    return _renderer


@dataclass
class Cost:
    """What a computation cost: forward passes, tokens pushed through the model, wall seconds."""

    forward_passes: int = 0
    tokens_computed: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cost:
        known = {"forward_passes", "tokens_computed", "seconds"}
        return cls(
            forward_passes=int(d.get("forward_passes", 0)),
            tokens_computed=int(d.get("tokens_computed", 0)),
            seconds=float(d.get("seconds", 0.0)),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def add(self, forward_passes: int = 0, tokens: int = 0) -> None:
        self.forward_passes += forward_passes
        self.tokens_computed += tokens


class Timer:
    """Context manager that adds elapsed wall time to a Cost."""

    def __init__(self, cost: Cost):
        self.cost = cost

    def __enter__(self) -> Cost:
        self._t0 = time.perf_counter()
        return self.cost

    def __exit__(self, *exc) -> None:
        self.cost.seconds += time.perf_counter() - self._t0


class Result(ABC):
    """Base of every lens result: JSON round trip with schema check, DataFrame, HTML page, Jupyter widget."""

    SCHEMA: ClassVar[str]

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON document (a plain dict, "schema" key first)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """Rebuild the result from its JSON document."""

    @abstractmethod
    def to_frame(self):
        """A pandas DataFrame of the result's main table."""

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Result:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AttrilensError(f"Not a JSON document: {exc}. Pass what to_json() wrote.") from exc
        if not isinstance(d, dict) or d.get("schema") != cls.SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise AttrilensError(f"Expected a {cls.SCHEMA!r} document, got schema {got!r}.")
        return cls.from_dict(d)

    def to_html(self, title: str | None = None) -> str:
        """A self-contained HTML page showing this result (opens from disk, no server)."""
        return renderer().page([self.to_dict()], title=title or self.SCHEMA)

    def show(self):
        """The interactive Jupyter widget for this result."""
        return renderer().widget([self.to_dict()])

    def _repr_html_(self) -> str:  # notebooks without the widget still get a view
        return self.to_html()

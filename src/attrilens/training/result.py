"""`TraceResult`: the top-k proponents and opponents of a query among the training blocks ("attrilens/training/v1")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from attrilens.errors import AttrilensError
from attrilens.results import Cost, Result


@dataclass
class TraceResult(Result):
    """Training examples ranked by influence on (or relevance to) a response; higher score = more support."""

    SCHEMA: ClassVar[str] = "attrilens/training/v1"

    method: str
    prompt: str
    target: str
    tokens: list[int] | None
    proponents: list[dict[str, Any]]
    opponents: list[dict[str, Any]]
    cost: Cost = field(default_factory=Cost)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "method": self.method,
            "prompt": self.prompt,
            "target": self.target,
            "tokens": self.tokens,
            "proponents": self.proponents,
            "opponents": self.opponents,
            "cost": self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceResult:
        try:
            return cls(d["method"], d["prompt"], d["target"], d.get("tokens"), list(d["proponents"]),
                       list(d["opponents"]), Cost.from_dict(d.get("cost", {})))
        except KeyError as exc:
            raise AttrilensError(f"The training result has no {exc.args[0]!r} field. Pass what to_json() wrote.") from None

    def to_frame(self):
        import pandas as pd

        rows = [{"kind": "proponent", **p} for p in self.proponents] + [{"kind": "opponent", **o} for o in self.opponents]
        cols = ["kind", "rank", "id", "block", "score", "text"]
        frame = pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r} - set(cols)))
        return frame

    def ids(self) -> list[str]:
        """Document ids of the proponents, best first."""
        return [p["id"] for p in self.proponents]

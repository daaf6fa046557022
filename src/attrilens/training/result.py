"""`TraceResult`: the top-k proponents and opponents of a query among the training blocks ("attrilens/training/v1")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from attrilens.errors import AttrilensError
from attrilens.results import Cost, Result


@dataclass
class TraceHit:
    """One training block in a ranking: its rank (1 = first), document id, block number, text, score, neighbours."""

    rank: int
    id: str
    block: int
    score: float
    text: str
    neighbours: list[str] | None = None  # texts of the blocks around it in its document, when asked for

    def to_dict(self) -> dict[str, Any]:
        """The hit as the JSON entry the front end reads ("neighbours" only when asked for)."""
        d: dict[str, Any] = {"rank": self.rank, "id": self.id, "block": self.block, "text": self.text,
                             "score": self.score}
        if self.neighbours is not None:
            d["neighbours"] = list(self.neighbours)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceHit:
        """Rebuild a hit from its JSON entry."""
        try:
            neighbours = d.get("neighbours")
            return cls(int(d["rank"]), str(d["id"]), int(d["block"]), float(d["score"]), str(d["text"]),
                       list(neighbours) if neighbours is not None else None)
        except KeyError as exc:
            raise AttrilensError(f"A training example of the result has no {exc.args[0]!r} field. Pass what "
                                 "to_json() wrote.") from None


@dataclass
class TraceResult(Result):
    """Training examples ranked by influence on (or relevance to) a response; higher score = more support."""

    SCHEMA: ClassVar[str] = "attrilens/training/v1"

    method: str
    prompt: str
    target: str
    tokens: list[int] | None
    proponents: list[TraceHit]
    opponents: list[TraceHit]
    cost: Cost = field(default_factory=Cost)
    # a response the model generated: the prompt form it answered in and the form it was scored in (the index's),
    # "chat template" or "plain text"; None for a target that was given
    generated_with: str | None = None
    scored_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        forms = {"generated_with": self.generated_with, "scored_as": self.scored_as} if self.generated_with else {}
        return {
            "schema": self.SCHEMA,
            "method": self.method,
            "prompt": self.prompt,
            "target": self.target,
            "tokens": self.tokens,
            "proponents": [h.to_dict() for h in self.proponents],
            "opponents": [h.to_dict() for h in self.opponents],
            "cost": self.cost.to_dict(),
            **forms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceResult:
        try:
            return cls(d["method"], d["prompt"], d["target"], d.get("tokens"),
                       [TraceHit.from_dict(h) for h in d["proponents"]], [TraceHit.from_dict(h) for h in d["opponents"]],
                       Cost.from_dict(d.get("cost", {})), d.get("generated_with"), d.get("scored_as"))
        except KeyError as exc:
            raise AttrilensError(f"The training result has no {exc.args[0]!r} field. Pass what to_json() wrote.") from None

    def to_frame(self):
        import pandas as pd

        rows = ([{"kind": "proponent", **p.to_dict()} for p in self.proponents]
                + [{"kind": "opponent", **o.to_dict()} for o in self.opponents])
        cols = ["kind", "rank", "id", "block", "score", "text"]
        return pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r} - set(cols)))

    def forms_line(self) -> str | None:
        """One line on how a generated response was written and scored (e.g. "response generated with: chat
        template; scored as: plain text"); None for a given target."""
        if not self.generated_with:
            return None
        return f"response generated with: {self.generated_with}; scored as: {self.scored_as}"

    def ids(self) -> list[str]:
        """Document ids of the proponents, best first."""
        return [p.id for p in self.proponents]

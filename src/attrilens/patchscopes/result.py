"""`InspectResult`: what a Patchscope run returns (schema "attrilens/inspect/v1")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from attrilens.errors import AttrilensError
from attrilens.results import Cost, Result


@dataclass
class Cell:
    """One (source layer, source position) → target layer read-out: top next tokens and an optional generation."""

    layer: int
    position: int
    target_layer: int
    top_tokens: list[dict[str, Any]] = field(default_factory=list)  # [{"token": str, "prob": float}]
    generation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "position": self.position,
            "target_layer": self.target_layer,
            "top_tokens": [{"token": t["token"], "prob": float(t["prob"])} for t in self.top_tokens],
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        try:
            return cls(
                layer=int(d["layer"]),
                position=int(d["position"]),
                target_layer=int(d["target_layer"]),
                top_tokens=[{"token": str(t["token"]), "prob": float(t["prob"])} for t in d.get("top_tokens", [])],
                generation=d.get("generation"),
            )
        except (KeyError, TypeError) as exc:
            raise AttrilensError(f"A cell of the inspect document is missing {exc}. Pass what to_json() wrote.") from exc


@dataclass
class InspectResult(Result):
    """Cells of a Patchscope run over (layer, position) pairs of one source prompt, read through one target."""

    SCHEMA: ClassVar[str] = "attrilens/inspect/v1"

    preset: str
    source_prompt: str
    source_tokens: list[str]
    target_prompt: str
    cells: list[Cell] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "preset": self.preset,
            "source": {"prompt": self.source_prompt, "tokens": list(self.source_tokens)},
            "target": {"prompt": self.target_prompt},
            "cells": [c.to_dict() for c in self.cells],
            "cost": self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InspectResult:
        try:
            return cls(
                preset=str(d["preset"]),
                source_prompt=str(d["source"]["prompt"]),
                source_tokens=[str(t) for t in d["source"]["tokens"]],
                target_prompt=str(d["target"]["prompt"]),
                cells=[Cell.from_dict(c) for c in d["cells"]],
                cost=Cost.from_dict(d.get("cost", {})),
            )
        except (KeyError, TypeError) as exc:
            raise AttrilensError(f"The inspect document is missing {exc}. Pass what to_json() wrote.") from exc

    def to_frame(self):
        """One row per cell: layer, position, the source token there, target layer, top-1 token and probability."""
        import pandas as pd

        rows = []
        for c in self.cells:
            top = c.top_tokens[0] if c.top_tokens else {"token": None, "prob": float("nan")}
            tok = self.source_tokens[c.position] if -len(self.source_tokens) <= c.position < len(self.source_tokens) else None
            rows.append({
                "layer": c.layer, "position": c.position, "source_token": tok, "target_layer": c.target_layer,
                "top_token": top["token"], "top_prob": top["prob"], "generation": c.generation,
            })
        return pd.DataFrame(rows, columns=["layer", "position", "source_token", "target_layer", "top_token",
                                           "top_prob", "generation"])

    def grid(self, what: str = "top_token"):
        """A layer × position table of one column of `to_frame()` (the logit-lens picture)."""
        frame = self.to_frame()
        return frame.pivot_table(index="layer", columns="position", values=what, aggfunc="first")

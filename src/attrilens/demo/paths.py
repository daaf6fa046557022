"""Where the shipped demo assets live (fact world and tiny models inside the package)."""

from __future__ import annotations

from pathlib import Path

from attrilens.errors import AttrilensError

ASSETS = Path(__file__).resolve().parent / "assets"


def demo_model_dir(name: str = "target") -> Path:
    """Directory of a shipped demo model: "target" (serves all three lenses) or "proxy" (≥4× smaller)."""
    path = ASSETS / "models" / name
    if not (path / "config.json").is_file():
        raise AttrilensError(
            f"The demo model {name!r} is not in {path}. Rebuild it with `python -m attrilens.demo.build`."
        )
    return path


def demo_world_dir() -> Path:
    """Directory of the shipped fact world (corpus.jsonl, queries.jsonl, episodes.jsonl, facts.jsonl)."""
    path = ASSETS / "world"
    if not (path / "corpus.jsonl").is_file():
        raise AttrilensError(f"The demo world is not in {path}. Rebuild it with `python -m attrilens.demo.build`.")
    return path

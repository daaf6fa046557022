"""How verbs print: a result's JSON alone on stdout with --json, else its table; options every verb shares."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from attrilens.results import Result

JsonFlag = Annotated[bool, typer.Option("--json", help="Print only the JSON document on stdout (progress stays on stderr).")]


def emit(result: Result, as_json: bool) -> None:
    """Print a result: its JSON alone on stdout with --json, else its table."""
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
        return
    from rich.console import Console

    Console().print(result.to_frame().to_string())


def emit_summary(summary: dict[str, Any], as_json: bool) -> None:
    """Print a plain summary dict: one JSON line with --json, indented JSON otherwise."""
    sys.stdout.write(json.dumps(summary, indent=None if as_json else 2, default=str) + "\n")


def choices_help(text: str, names: list[str]) -> str:
    """Option help that lists the registered names (hyphenated; underscores are accepted too)."""
    return f"{text} One of: {', '.join(names)}."

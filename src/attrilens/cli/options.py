"""What every verb that takes a method shares: `--option NAME=VALUE` (repeatable), which reaches any option of the
method by the one protocol of `attrilens.options`, and which of a verb's own flags were given on the command line
(a flag left at its default never disagrees with an `--option`; one given both ways with another value is an error).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import typer


def option_flag(example: str, lens: str) -> Any:
    """The `--option` parameter type of a verb: its help names an example and where the options are listed."""
    return Annotated[list[str] | None, typer.Option(
        "--option", metavar="<str>", help=f"NAME=VALUE: set any option of the method (repeatable), e.g. --option {example}; "
                         f"`attrilens methods {lens}` lists every method's options, types and defaults.")]


def from_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the running command's parameter `name` was given on the command line (not left at its default)."""
    return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"


def given_values(ctx: typer.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `values` (parameter name → value) whose parameter was given on the command line."""
    return {k: v for k, v in values.items() if from_command_line(ctx, k)}


def given_flags(ctx: typer.Context, names: Iterable[str]) -> list[str]:
    """The options of the running command given on the command line, outside `names`, as --flag spellings."""
    names = set(names)
    return [p.opts[0] if p.opts else p.name for p in ctx.command.params
            if p.name not in names and from_command_line(ctx, p.name)]

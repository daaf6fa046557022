"""CLI verb of the method catalogue: `attrilens methods [LENS]` — every registered method, its options and help."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from attrilens.cli.output import JsonFlag


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `methods` to the app (it has no benchmark)."""

    @app.command("methods")
    def methods_cmd(
        lens: Annotated[str | None, typer.Argument(help="context, training or patchscopes (or a verb's name: trace, "
                                                        "index, inspect); default: every lens.")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Every method of each lens (context estimators and wrappers, training-data methods, Patchscope presets)
        with a one-line summary and its options: name, type, default and help (set them with --option NAME=VALUE)."""
        from attrilens.app.methods import methods, methods_text

        rows = methods(lens)
        sys.stdout.write(json.dumps({"methods": rows}, ensure_ascii=False) + "\n" if as_json else methods_text(rows))

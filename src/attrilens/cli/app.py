"""The typer app: verbs registered by one module per lens, bad input as one line on stderr and exit code 2.

The verbs and options are the Python API's names (see docs/architecture.md). With `--json` a verb prints only its
result's JSON on stdout; progress bars and logs go to stderr.
"""

from __future__ import annotations

import os
import sys

import typer

from attrilens.cli import context, demo, models, patchscopes, serve, training
from attrilens.errors import AttrilensError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="attrilens",
    help="Why did the language model say that? Context attribution, training-data attribution and Patchscopes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: faithfulness/quality against ground truth and cost ratios vs a baseline.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

for module in (demo, models, context, training, patchscopes, serve):
    module.register(app, bench_app)


def main() -> None:
    """Entry point: run the app, turning bad input into one line on stderr and exit code 2."""
    try:
        app()
    except AttrilensError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None

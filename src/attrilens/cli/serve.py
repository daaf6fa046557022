"""CLI verb of the views: `attrilens serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attrilens.errors import AttrilensError


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `serve` to the CLI (the views have no benchmark)."""

    @app.command()
    def serve(
        model: Annotated[str | None, typer.Option(help="Model the web app computes with: a registered name "
                                                      "(`attrilens models list`) or a model directory.")] = None,
        index: Annotated[Path | None, typer.Option(help="Training-data index (from `attrilens index build`) for tracing.")] = None,
        report: Annotated[Path | None, typer.Option(help="Directory of result JSON files to show (e.g. `attrilens demo --out`).")] = None,
        verbatim_index: Annotated[Path | None, typer.Option(help="Verbatim index (`attrilens index build --method verbatim`, "
                                                                 "same model): the view finds spans of a text stated word "
                                                                 "for word in the training corpus.")] = None,
        host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to share the model.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    ) -> None:
        """The local web app: the views plus a JSON API returning the same documents as --json."""
        from attrilens import models

        model_dir = models.get(model) if model in models.MODELS else None if model is None else Path(model)
        for name, path in (("--model", model_dir), ("--index", index), ("--report", report), ("--verbatim-index", verbatim_index)):
            if path is not None and not path.is_dir():
                what = "an existing directory" + (" or a registered model name" if name == "--model" else "")
                raise AttrilensError(f"{name} {path} does not exist or is not a directory. Pass {what}.")
        if model_dir is not None and not (model_dir / "config.json").is_file():
            raise AttrilensError(f"--model {model} has no config.json. Pass a Hugging Face model directory.")
        if verbatim_index is not None and model_dir is None:
            raise AttrilensError("--verbatim-index needs --model: the index is searched with the tokens of the model that "
                                 "built it. Pass --model too.")
        if verbatim_index is not None:  # fail now, not at the first request: the manifest says what kind it is
            from attrilens.training.store import read_manifest

            kind = read_manifest(verbatim_index).get("method")
            if kind != "verbatim":
                raise AttrilensError(f"--verbatim-index {verbatim_index} is a {kind} index, not a verbatim one. Pass it "
                                     "as --index, or build one with `attrilens index build --method verbatim`.")
        if not 0 < port < 65536:
            raise AttrilensError(f"--port {port} is not a TCP port. Pass 1-65535.")
        from attrilens.app.server import serve as run

        run(model_dir=model_dir, index_dir=index, report_dir=report, host=host, port=port, verbatim_dir=verbatim_index)

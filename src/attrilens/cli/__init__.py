"""The `attrilens` command line: one typer app, one module per lens; the only package that imports typer."""

from __future__ import annotations

from attrilens.cli.app import app, main

__all__ = ["app", "main"]

"""Fixtures shared by test files."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the real entry point in-process: ``run_cli(*argv) -> (exit code, stdout, stderr)``."""
    from attrilens.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["attrilens", *args])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        return stop.value.code, out.out, out.err

    return run

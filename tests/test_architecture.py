"""The layout's rules, checked on the source: dependency arrows point one way, only the CLI imports typer, no module
reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "attrilens"
LENSES = ("context", "training", "inspect")
# What sits below each layer may not import what sits above it: demo / cli / bench / view → lenses → LM.
ABOVE_LENSES = ("attrilens.demo", "attrilens.cli", "attrilens.bench", "attrilens.view", "attrilens.server")
CORE = ("lm", "errors", "registry", "jsonl", "results", "spans", "models")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [a.name for a in node.names]))
    return out


def _files(*parts: str) -> list[Path]:
    root = PACKAGE.joinpath(*parts)
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


@pytest.mark.parametrize("lens", LENSES)
def test_lenses_import_neither_the_demo_nor_anything_above_them(lens: str):
    bad = [(str(f.relative_to(PACKAGE)), m) for f in _files(lens) for m, _ in _imports(f)
           if m.startswith(ABOVE_LENSES) or m == "typer" or m.startswith("typer.")]
    assert not bad, bad


def test_the_core_imports_no_lens():
    lens_modules = tuple(f"attrilens.{x}" for x in (*LENSES, "demo", "cli", "bench", "view"))
    bad = [(name, m) for name in CORE for f in _files(name) if f.is_file() for m, _ in _imports(f)
           if m.startswith(lens_modules) and not (name == "results" and m == "attrilens.view")]
    assert not bad, bad  # (a result renders itself through the view: `to_html()`, `show()`)


def test_only_the_cli_imports_typer():
    bad = [str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py") if "cli" not in f.relative_to(PACKAGE).parts
           and any(m == "typer" or m.startswith("typer.") for m, _ in _imports(f))]
    assert not bad, bad


def test_no_module_imports_another_modules_private_names():
    bad = [(str(f.relative_to(PACKAGE)), m, n) for f in PACKAGE.rglob("*.py") for m, names in _imports(f)
           for n in names if m.startswith("attrilens") and n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_no_package_init_imports_lazily():
    bad = [str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("__init__.py")
           if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(f.read_text()).body)]
    assert not bad, bad

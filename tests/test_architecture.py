"""The layout's rules, checked on the source: the tiers core ← lenses ← workflows ← app (with the CLI, the story
and the benchmarks beside the app) and no import circle anywhere, lazy imports included; only the CLI imports
typer; no module reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "attrilens"
LENSES = ("context", "training", "patchscopes")
CORE = ("lm", "errors", "registry", "jsonl", "results", "spans", "models", "metrics", "corpus_formats", "testing")
CORE_MODULES = tuple(f"attrilens.{x}" for x in CORE)
# What sits below each tier may not import what sits above it: app / cli / demo / bench → workflows → lenses → core.
APP = ("attrilens.app", "attrilens.cli", "attrilens.demo", "attrilens.bench", "attrilens.view")
ABOVE_LENSES = (*APP, "attrilens.workflows")


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
            subs = [a.name for a in node.names if _is_module(f"{base}.{a.name}")]  # from attrilens import models
            out += [(f"{base}.{n}", []) for n in subs]
            rest = [a.name for a in node.names if a.name not in subs]
            if rest or not subs:
                out.append((base, rest))
    return out


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _files(*parts: str) -> list[Path]:
    root = PACKAGE.joinpath(*parts)
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


@pytest.mark.parametrize("lens", LENSES)
def test_lenses_import_neither_the_demo_nor_anything_above_them(lens: str):
    bad = [(str(f.relative_to(PACKAGE)), m) for f in _files(lens) for m, _ in _imports(f)
           if m.startswith(ABOVE_LENSES) or m == "typer" or m.startswith("typer.")]
    assert not bad, bad


@pytest.mark.parametrize("lens", LENSES)
def test_lenses_never_import_each_other(lens: str):
    others = tuple(f"attrilens.{x}" for x in LENSES if x != lens)
    bad = [(str(f.relative_to(PACKAGE)), m) for f in _files(lens) for m, _ in _imports(f) if m.startswith(others)]
    assert not bad, bad


def test_the_core_imports_only_the_core():
    bad = [(name, m) for name in CORE for f in _files(name) if f.is_file() for m, _ in _imports(f)
           if m.startswith("attrilens") and not m.startswith(CORE_MODULES)]
    assert not bad, bad  # (a result draws itself through the renderer the views register: `to_html()`, `show()`)


def test_every_module_is_in_a_tier():
    tiers = {*CORE_MODULES, *(f"attrilens.{x}" for x in LENSES), *ABOVE_LENSES, "attrilens"}
    stray = [_module_name(f) for f in PACKAGE.rglob("*.py")
             if not any(_module_name(f) == t or _module_name(f).startswith(t + ".") for t in tiers)]
    assert not stray, f"{stray}: put each in a tier (CORE, LENSES, workflows, app) and say so in docs/architecture.md"


def test_workflows_import_no_app():
    bad = [(str(f.relative_to(PACKAGE)), m) for f in _files("workflows") for m, _ in _imports(f) if m.startswith(APP)]
    assert not bad, bad  # bench, the story (demo), the CLI and the app use the workflows, never the other way


def test_the_views_import_only_the_core():
    bad = [(str(f.relative_to(PACKAGE)), m) for f in _files("view") for m, _ in _imports(f)
           if m.startswith("attrilens") and not m.startswith((*CORE_MODULES, "attrilens.view"))]
    assert not bad, bad  # the lenses reach the views through attrilens.app (LensBackend), registered, not imported


def test_the_benchmarks_are_imported_only_by_the_cli():
    bad = [(str(f.relative_to(PACKAGE)), m) for f in PACKAGE.rglob("*.py")
           if f.relative_to(PACKAGE).parts[0] not in ("bench", "cli") for m, _ in _imports(f)
           if m.startswith("attrilens.bench")]
    assert not bad, bad


def test_the_demo_holds_the_story_only():
    """attrilens.demo is the shipped story and its assets; the verbs it once held live in attrilens.workflows."""
    story = {"__init__", "build", "countries", "index", "misinfo", "misinfo_build", "paths", "report", "story"}
    extra = sorted(str(f.relative_to(PACKAGE / "demo")) for f in _files("demo")
                   if "assets" not in f.parts and f.stem not in story)
    assert not extra, f"{extra}: a verb or a workflow goes in attrilens/workflows, a benchmark in attrilens/bench"


def _import_graph() -> dict[str, set[str]]:
    """Module → the attrilens modules it imports."""
    files = {_module_name(f): f for f in PACKAGE.rglob("*.py")}
    return {name: {m for m, _ in _imports(f) if m in files} - {name} for name, f in files.items()}


def test_no_import_circles():
    """Strongly connected components of the import graph, lazy (in-function) imports included: none may have two
    modules. The package's own __init__ is left out: importing any submodule runs it anyway."""
    graph = {m: {x for x in out if x != "attrilens"} for m, out in _import_graph().items() if m != "attrilens"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


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

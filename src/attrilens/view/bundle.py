"""Join the front end's ES modules into one module string, so the report, the web app and the widget ship one script.

No build tool: each `static/*.js` file is a plain ES module whose only imports are `import { a, b as c } from "./x.js";`
lines and whose exports are `export function|const|class NAME`. Dependencies become closures, in dependency order;
the entry keeps its own `export default` (anywidget needs it).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
_IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([A-Za-z0-9_-]+)\.js";[ \t]*$', re.M)
_EXPORT = re.compile(r"^export\s+((?:async\s+)?(?:function\*?|const|let|class))\s+([A-Za-z_$][\w$]*)", re.M)
_LEFTOVER = re.compile(r"^\s*(import|export)\b(?!\s+default\b)", re.M)


class BundleError(RuntimeError):
    """A module of the front end does not follow the format the joiner understands."""


def _var(name: str) -> str:
    return "__al_" + name.replace("-", "_")


def _imports(source: str) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    for names, module in _IMPORT.findall(source):
        pairs = []
        for item in filter(None, (x.strip() for x in names.split(","))):
            parts = item.split()
            pairs.append((parts[0], parts[2]) if len(parts) == 3 and parts[1] == "as" else (item, item))
        out.append((module, pairs))
    return out


def _rewrite(source: str) -> str:
    def destructure(match: re.Match) -> str:
        (module, pairs), = _imports(match.group(0))
        names = ", ".join(a if a == b else f"{a}: {b}" for a, b in pairs)
        return f"const {{ {names} }} = {_var(module)};"

    return _IMPORT.sub(destructure, source)


@lru_cache(maxsize=8)
def bundle(entry: str = "page.js") -> str:
    """The entry module and everything it imports, as one ES module (text)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise BundleError(f"Import cycle through {name}.js; the front end's modules must form a tree.")
        path = STATIC / f"{name}.js"
        if not path.is_file():
            raise BundleError(f"Module {name}.js imported but not in {STATIC}.")
        visiting.add(name)
        for dep, _ in _imports(path.read_text(encoding="utf-8")):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    root = entry.removesuffix(".js")
    visit(root)
    chunks = []
    for name in order:
        source = _rewrite((STATIC / f"{name}.js").read_text(encoding="utf-8"))
        if name == root:
            if _LEFTOVER.search(source):
                raise BundleError(f"{name}.js has an import/export the joiner does not understand.")
            chunks.append(f"// ---- {name}.js (entry)\n{source}")
            continue
        exported = [m.group(2) for m in _EXPORT.finditer(source)]
        body = _EXPORT.sub(lambda m: f"{m.group(1)} {m.group(2)}", source)
        if _LEFTOVER.search(body) or re.search(r"^\s*export\s+default\b", body, re.M):
            raise BundleError(f"{name}.js has an import/export the joiner does not understand.")
        chunks.append(f"// ---- {name}.js\nconst {_var(name)} = (() => {{\n{body}\nreturn {{ {', '.join(exported)} }};\n}})();")
    text = "\n".join(chunks)
    if re.search(r"</script|<!--", text, re.I):
        raise BundleError("The front end's source contains '</script' or '<!--', which would break the inline page.")
    return text


@lru_cache(maxsize=1)
def stylesheet() -> str:
    """The views' CSS."""
    return (STATIC / "style.css").read_text(encoding="utf-8")

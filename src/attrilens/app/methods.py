"""Every registered method of the three lenses with its options: what `attrilens methods`, `attrilens.methods()` and
the web form list, all from one description (`attrilens.options.describe` of each method's `Options`).

Rows are plain dicts (`pandas.DataFrame(methods())` works): lens, kind, name, summary, and options (name, type,
default, help, choices, settable — whether `--option NAME=VALUE` or a form field can give it).
"""

from __future__ import annotations

from typing import Any

from attrilens.context import CONTEXT_METHODS, CONTEXT_WRAPPERS
from attrilens.errors import AttrilensError
from attrilens.patchscopes import presets
from attrilens.registry import canonical, summary_of
from attrilens.training import TDA_METHODS

LENSES = ("context", "training", "patchscopes")
# the CLI's own words for a lens (its verbs) name it too
LENS_ALIASES = {"context": "context", "training": "training", "trace": "training", "index": "training",
                "tda": "training", "patchscopes": "patchscopes", "inspect": "patchscopes", "presets": "patchscopes"}
# (lens, kind) → how a method of that kind is asked for on the command line
USAGE = {
    ("context", "estimator"): "attrilens context --method NAME [--option NAME=VALUE]",
    ("context", "wrapper"): "joined to an estimator with '+', e.g. attrilens context --method cached+hierarchical",
    ("training", "method"): "attrilens index build --method NAME [--option NAME=VALUE]",
    ("patchscopes", "preset"): "attrilens inspect --preset NAME [--option NAME=VALUE]",
}


def lens_name(lens: str) -> str:
    """The lens a name means (its own name or a verb's: `inspect` is patchscopes); unknown names list the valid ones."""
    key = canonical(lens)
    if key not in LENS_ALIASES:
        raise AttrilensError(f"Unknown lens {lens!r}. Choose one of {', '.join(LENSES)} (or a verb's name: "
                             f"{', '.join(k for k in LENS_ALIASES if k not in LENSES)}).")
    return LENS_ALIASES[key]


def _registries() -> list[tuple[str, str, Any]]:
    return [("context", "estimator", CONTEXT_METHODS), ("context", "wrapper", CONTEXT_WRAPPERS),
            ("training", "method", TDA_METHODS), ("patchscopes", "preset", presets.PRESETS)]


def methods(lens: str | None = None) -> list[dict[str, Any]]:
    """One row per registered method (of one lens, or all): lens, kind, name, one-line summary and its options."""
    wanted = None if lens is None else lens_name(lens)
    return [{"lens": where, "kind": kind, "name": name, "summary": summary_of(cls),
             "options": [o.to_dict() for o in cls.describe_options()]}
            for where, kind, registry in _registries() if wanted in (None, where) for name, cls in registry.items()]


def form_options() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """What the web form builds its option fields from: {"context": {component: options}, "presets": {preset:
    options}}, only the options text can give."""
    rows = methods()
    by = {"context": [r for r in rows if r["lens"] == "context"], "presets": [r for r in rows if r["kind"] == "preset"]}
    return {key: {r["name"]: [o for o in r["options"] if o["settable"]] for r in group} for key, group in by.items()}


def _option_line(o: dict[str, Any]) -> str:
    choices = f" [{'|'.join(map(str, o['choices']))}]" if o["choices"] else ""
    where = "" if o["settable"] else " (Python only)"
    return f"    {o['name']}: {o['type']} = {o['default']!r}{choices}{where}\n        {o['help']}"


def methods_text(rows: list[dict[str, Any]]) -> str:
    """The rows as `attrilens methods` prints them: one section per lens and kind, a method a line, its options
    indented beneath with type, default, choices and help."""
    out: list[str] = []
    for (lens, kind), usage in USAGE.items():
        group = [r for r in rows if (r["lens"], r["kind"]) == (lens, kind)]
        if not group:
            continue
        out.append(f"{lens} {kind}s — {usage}")
        for r in group:
            out.append(f"  {r['name']}: {r['summary']}")
            out.extend(_option_line(o) for o in r["options"])
        out.append("")
    return "\n".join(out)

"""The self-contained HTML page: CSS, the joined ES modules and the result documents inline; opens from disk."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from typing import Any

from attrilens.view.bundle import bundle, stylesheet


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN and ±inf become null (JSON has no such numbers; the views show '—')."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def script_json(value: Any) -> str:
    """JSON for a <script type="application/json"> element: '<', '>', '&' and line separators escaped."""
    text = json.dumps(clean(value), ensure_ascii=False, allow_nan=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def render_page(documents: list[dict[str, Any]], title: str = "attrilens", *, config: dict[str, Any] | None = None) -> str:
    """A self-contained HTML page showing result documents; `config` {"mode": "server", "api": URL} for the web app."""
    script = bundle("page.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    # Only our own script runs (by hash): even a parser bug could not run an inline handler from untrusted text.
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'")
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\nbody {{ margin: 0; background: #fff; }}\n{stylesheet()}</style>\n"
        "</head>\n<body>\n<div id=\"attrilens-app\"></div>\n"
        "<noscript>This report needs JavaScript to draw its views; the raw results are in the JSON files beside it.</noscript>\n"
        f"<script type=\"application/json\" id=\"attrilens-config\">{script_json(config or {'mode': 'static'})}</script>\n"
        f"<script type=\"application/json\" id=\"attrilens-data\">{script_json(documents)}</script>\n"
        f"<script type=\"module\">{script}</script>\n</body>\n</html>\n"
    )

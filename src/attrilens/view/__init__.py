"""The front end: one set of ES modules behind the HTML report, the Jupyter widget and the web app.

Until the interactive view lands, `render_page` writes an escaped, readable JSON page.
"""

from __future__ import annotations

import html
import json
from typing import Any


def render_page(documents: list[dict[str, Any]], title: str = "attrilens") -> str:
    """A self-contained HTML page for result documents; every untrusted string is escaped."""
    body = "\n".join(f"<pre>{html.escape(json.dumps(d, indent=2, ensure_ascii=False))}</pre>" for d in documents)
    return f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>\n{body}\n"


def widget_for(documents: list[dict[str, Any]]):
    """The Jupyter view of result documents (an HTML display until the widget lands)."""
    from IPython.display import HTML

    return HTML(render_page(documents))

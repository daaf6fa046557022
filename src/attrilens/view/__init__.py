"""The front end: one set of plain ES modules (`static/`) behind the HTML report, the Jupyter widget and the web app.

Every view builds its DOM from text nodes, so untrusted text (prompts, responses, corpus lines) always shows as text.
"""

from __future__ import annotations

from typing import Any

from attrilens.view.page import render_page

__all__ = ["render_page", "widget_for"]


def widget_for(documents: list[dict[str, Any]], backend: Any = None):
    """The Jupyter widget for result documents; with a `backend` (e.g. `LensBackend(model_dir)`) selections recompute."""
    from attrilens.view.widget import ResultWidget

    return ResultWidget(documents, backend=backend)

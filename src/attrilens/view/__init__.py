"""The front end: one set of plain ES modules (`static/`) behind the HTML report, the Jupyter widget and the web app.

Every view builds its DOM from text nodes, so untrusted text (prompts, responses, corpus lines) always shows as text.
"""

from __future__ import annotations

from typing import Any

from attrilens.results import register_renderer
from attrilens.view.page import render_page

__all__ = ["ViewRenderer", "render_page", "widget_for"]


def widget_for(documents: list[dict[str, Any]], backend: Any = None):
    """The Jupyter widget for result documents; with a `backend` (e.g. `attrilens.app.backend.LensBackend(model_dir)`) selections recompute."""
    from attrilens.view.widget import ResultWidget

    return ResultWidget(documents, backend=backend)


class ViewRenderer:
    """Results drawn by these views: `to_html` as the static report page, `show` as the widget (no backend)."""

    def page(self, documents: list[dict[str, Any]], title: str) -> str:
        return render_page(documents, title=title)

    def widget(self, documents: list[dict[str, Any]]) -> Any:
        return widget_for(documents)


register_renderer(ViewRenderer())

"""What the browser tests share: where Chromium is, the fixture documents, a page that records errors."""

from __future__ import annotations

import json
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def report_documents() -> list[dict]:
    """One generation seen through all three lenses, plus a comparison (what `attrilens demo` puts in report.html)."""
    return fixture("training.json") + [fixture("compare.json"), fixture("context.json"), fixture("inspect.json")]


class Watched:
    """A page plus what went wrong in it: console errors, uncaught exceptions, dialogs (alert = injected script ran)."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def on_dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", on_dialog)


def open_report(watched, tmp_path, docs, *, wait_for: str = ".al-view-inspect", title: str = "attrilens report"):
    """Write a static report of `docs`, open it from disk and wait until `wait_for` has rendered."""
    from attrilens.view import render_page

    path = tmp_path / "report.html"
    path.write_text(render_page(docs, title=title), encoding="utf-8")
    watched.page.goto(path.as_uri())
    watched.page.wait_for_selector(wait_for)
    return watched.page

"""Browser fixtures: Debian's chromium driven by Playwright (never `playwright install`); a page that records errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def report_documents() -> list[dict]:
    """One generation seen through all three lenses, plus a comparison (what `attrilens demo` puts in report.html)."""
    return fixture("training.json") + [fixture("compare.json"), fixture("context.json"), fixture("inspect.json")]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: the browser tests need it. "
                    "Run `sh scripts/install_chromium.sh` (apt-get install chromium) and rerun.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


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


@pytest.fixture()
def watched(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    w = Watched(context.new_page())
    yield w
    context.close()


def open_report(watched, tmp_path, docs, *, wait_for: str = ".al-view-inspect", title: str = "attrilens report"):
    """Write a static report of `docs`, open it from disk and wait until `wait_for` has rendered."""
    from attrilens.view import render_page

    path = tmp_path / "report.html"
    path.write_text(render_page(docs, title=title), encoding="utf-8")
    watched.page.goto(path.as_uri())
    watched.page.wait_for_selector(wait_for)
    return watched.page

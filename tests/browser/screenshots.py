"""Writes docs/view-*.png: each view of the front end in chromium (run: python tests/browser/screenshots.py)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from playwright.sync_api import sync_playwright  # noqa: E402

from attrilens.app.server import create_app  # noqa: E402
from attrilens.view import render_page  # noqa: E402
from live import LiveServer  # noqa: E402
from pages import ARGS, CHROMIUM, fixture, report_documents  # noqa: E402
from test_browser_app import FakeLenses  # noqa: E402
from test_browser_verbatim import generation_docs  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs"


def verbatim_shot(page, tmp: str) -> None:
    """docs/view-verbatim.png: a verbatim span picked in the main view, "stated in" beside "influenced by"."""
    # the fixture's emoji (one code point, as is "·": offsets unchanged) has no glyph in a bare chromium
    verbatim = json.loads(json.dumps(fixture("verbatim.json"), ensure_ascii=False).replace("\U0001F3F0", "·"))
    report = Path(tmp) / "verbatim.html"
    report.write_text(render_page(generation_docs(verbatim) + [verbatim], title="attrilens report"), encoding="utf-8")
    page.goto(report.as_uri())
    page.locator('.al-view-training .al-vspan[data-span="1"]').first.click()
    page.mouse.move(0, 0)
    page.locator(".al-view-training").screenshot(path=DOCS / "view-verbatim.png")


def main() -> None:
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        report = Path(tmp) / "report.html"
        report.write_text(render_page(report_documents(), title="attrilens report"), encoding="utf-8")
        page.goto(report.as_uri())
        page.wait_for_selector(".al-view-inspect")
        page.screenshot(path=DOCS / "view-report.png", full_page=True)
        page.locator('.al-src[data-index="5"]').hover()
        page.locator(".al-view-context").screenshot(path=DOCS / "view-context.png")
        page.locator('.al-cell[data-layer="3"][data-position="4"]').click()
        page.locator(".al-view-inspect").screenshot(path=DOCS / "view-inspect.png")
        page.locator(".al-view-compare").screenshot(path=DOCS / "view-compare.png")
        verbatim_shot(page, tmp)
        with LiveServer(create_app(FakeLenses())) as url:
            page.goto(url + "/")
            page.evaluate(f"window.attrilens.update({fixture('training.json')[:1]!r})".replace("None", "null"))
            page.locator(".al-view-training .al-tok", has_text="seat").hover()
            page.mouse.down()
            page.locator(".al-view-training .al-tok", has_text="government").hover()
            page.mouse.up()
            page.wait_for_selector('.al-example[data-id="for:seat of government:0"]')
            page.locator(".al-view-training button", has_text="show neighbours").first.click()
            page.wait_for_selector("text=block after")
            page.screenshot(path=DOCS / "view-main.png", full_page=True)
        browser.close()
    print("wrote", ", ".join(sorted(p.name for p in DOCS.glob("view-*.png"))))


if __name__ == "__main__":
    main()
